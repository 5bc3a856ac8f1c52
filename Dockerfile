# The harvester as a container: `docker compose up` runs it against the compose PostgreSQL.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY harvester ./harvester
COPY migrations ./migrations
RUN pip install --no-cache-dir . && useradd --system harvester
USER harvester
ENTRYPOINT ["harvester"]
CMD ["run"]
