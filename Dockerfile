# The harvester as a container: `docker compose up` runs it against the compose PostgreSQL.
# Base images are pinned to a patch release; bump both stages together.

# Build the wheel (the only stage that sees the source tree).
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY harvester ./harvester
COPY migrations ./migrations
RUN pip wheel --no-deps -w /wheels .

# Install it with its dependencies at the versions pinned in constraints.txt; run as non-root.
FROM python:3.11.13-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HARVESTER_METRICS_PORT=9464 \
    HARVESTER_METRICS_HOST=0.0.0.0
WORKDIR /tmp/install
COPY constraints.txt ./
COPY --from=build /wheels ./wheels
RUN pip install -c constraints.txt ./wheels/*.whl \
    && rm -rf /tmp/install \
    && groupadd --system --gid 10001 harvester \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/harvester harvester
WORKDIR /home/harvester
USER 10001:10001
# 9464: /metrics and /healthz of `harvester run` (HARVESTER_METRICS_PORT/HOST above).
# 8080: the checkout API of `harvester serve` (give it `--host 0.0.0.0` to reach it from outside).
EXPOSE 9464 8080
# /healthz answers on the metrics port, i.e. under `harvester run`; a container running another
# command (`serve`, `migrate`...) should override or disable this (compose: `healthcheck:`).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]
ENTRYPOINT ["harvester"]
CMD ["run"]
