# sptelab's web app for a workshop, served by `sptelab serve` (granian) as an unprivileged user.
#
#   docker build -t sptelab .
#   docker run --rm -p 8000:8000 sptelab                        # then open http://127.0.0.1:8000
#   docker run --rm -p 8000:8000 -e SPTELAB_WORKSHOP=1 sptelab  # read-only: no editor, no upload
#   docker run --rm -p 8000:8000 --device /dev/kvm --group-add "$(stat -c %g /dev/kvm)" sptelab
#                                       # with "run on this machine's kernel" (the user must reach the device)
#
# Every option is a SPTELAB_* variable (defaults below; README.md, "Docker"), or a flag of
# `sptelab serve` given as the command: docker run ... sptelab sptelab serve --workshop --workers 2.

# Build the wheels, sptelab's and every dependency's, so the image installs offline from them and holds
# no build tool and no source tree.
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine/ engine/
COPY live/ live/
COPY cli/ cli/
COPY scenarios/ scenarios/
COPY app/ app/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.13-slim-bookworm
LABEL org.opencontainers.image.title="sptelab" \
      org.opencontainers.image.description="A step-able model of the KVM x86 TDP MMU around 'KVM: MMU: lazily drop large spte'" \
      org.opencontainers.image.licenses="MIT"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1
# The wheels are mounted for the install only, never copied into a layer (BuildKit, Docker's builder
# since 23.0).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/sptelab-*.whl \
 && groupadd --system --gid 10001 sptelab \
 && useradd --system --uid 10001 --gid sptelab --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sptelab

# The settings of `sptelab serve` (app/settings.py). HOST 0.0.0.0: reachable through the published port.
# WORKERS: each worker is a process with its own simulation cache. WORKSHOP=1: the read-only mode.
# ROOT_PATH=/prefix: behind a reverse proxy that serves the app under /prefix/ and strips it.
# FORWARDED_ALLOW_IPS: the proxies whose X-Forwarded-For/-Proto/-Host are trusted (comma-separated, or *).
# PUBLIC_URL=https://host: the address share links and exports are built from (never the Host header).
# HEADER_TIMEOUT, HEADER_BYTES, BODY_TIMEOUT: the socket limits of a server that faces a room directly.
ENV SPTELAB_HOST=0.0.0.0 \
    SPTELAB_PORT=8000 \
    SPTELAB_WORKERS=1 \
    SPTELAB_WORKSHOP=0 \
    SPTELAB_ROOT_PATH="" \
    SPTELAB_PROXY_HEADERS=1 \
    SPTELAB_FORWARDED_ALLOW_IPS=127.0.0.1 \
    SPTELAB_ACCESS_LOG=0 \
    SPTELAB_PUBLIC_URL="" \
    SPTELAB_HEADER_TIMEOUT=10 \
    SPTELAB_HEADER_BYTES=65536 \
    SPTELAB_BODY_TIMEOUT=30 \
    SPTELAB_CACHE_BYTES=536870912 \
    MALLOC_ARENA_MAX=2
# MALLOC_ARENA_MAX: glibc's arenas, one per request thread by default, each keeping the memory it freed;
# two bound RSS near what the caches hold (app/malloc.py sets the same when the variable is unset).

USER 10001:10001
EXPOSE 8000

# Python's own urllib, no curl in the image; /healthz answers without touching the caches, under any
# root path (the server strips it), on the port the settings name.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import json, os, sys, urllib.request as u; url = 'http://127.0.0.1:%s/healthz' % os.environ.get('SPTELAB_PORT', '8000'); answer = u.build_opener(u.ProxyHandler({})).open(url, timeout=4); sys.exit(0 if json.load(answer).get('status') == 'ok' else 1)"]

CMD ["sptelab", "serve"]
