"""`python -m app`: serve the web app as the settings say (SPTELAB_HOST, SPTELAB_PORT, SPTELAB_WORKERS,
SPTELAB_ROOT_PATH, SPTELAB_WORKSHOP, SPTELAB_PROXY_HEADERS, SPTELAB_FORWARDED_ALLOW_IPS, SPTELAB_ACCESS_LOG).

`sptelab serve` does the same, with command-line flags over the same settings.
"""

import uvicorn

from app.serving import APP, uvicorn_options
from app.settings import get_settings

if __name__ == "__main__":
    uvicorn.run(APP, **uvicorn_options(get_settings()))
