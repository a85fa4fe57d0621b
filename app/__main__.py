"""`python -m app`: serve the web app on the host and port of the settings (SPTELAB_HOST, SPTELAB_PORT).

`sptelab serve --host H --port P` does the same with command-line flags.
"""

import uvicorn

from app.settings import get_settings

if __name__ == "__main__":
    settings = get_settings()
    # No access log, as with `sptelab serve`: every player URL carries its scenario's share code.
    uvicorn.run("app.main:app", host=settings.host, port=settings.port, workers=1, access_log=False)
