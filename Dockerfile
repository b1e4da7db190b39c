# Image for the consumers and the scheduler (docker-compose.yml); the same code `make run` starts.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contracts contracts
COPY core core
COPY consumers consumers
COPY schedulers schedulers
COPY devstack devstack
COPY bench bench
COPY migrations migrations
COPY alembic.ini ./
RUN pip install --no-cache-dir .
CMD ["faststream", "run", "consumers.app:app"]
