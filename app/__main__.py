"""`python -m app`: serve the web app as the settings say (SPTELAB_HOST, SPTELAB_PORT, SPTELAB_WORKERS,
SPTELAB_ROOT_PATH, SPTELAB_WORKSHOP, SPTELAB_PROXY_HEADERS, SPTELAB_FORWARDED_ALLOW_IPS, SPTELAB_ACCESS_LOG,
SPTELAB_PUBLIC_URL, SPTELAB_HEADER_TIMEOUT, SPTELAB_HEADER_BYTES, SPTELAB_BODY_TIMEOUT).

`sptelab serve` does the same, with command-line flags over the same settings.
"""

from app.serving import serve
from app.settings import get_settings

if __name__ == "__main__":
    serve(get_settings())
