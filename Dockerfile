# One image for every process of the project in docker-compose.yml: the consumers (the default
# command), the scheduler replicas, the migrations and the Bot API double; the same code `make run`
# starts. It runs as an unprivileged user, and its HEALTHCHECK asks /readyz (dianabot_core/probe.py).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 dianabot \
    && useradd --system --uid 10001 --gid dianabot --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin dianabot

WORKDIR /app
# The runtime lock first (exact pins, hashes checked; `make lock` writes it), in a layer of its own that
# a code change does not rebuild; then the contracts, their own distribution (the service pins it),
# and the service itself, with no dependencies of their own choosing. The service's packages are the
# ones its wheel ships (pyproject.toml): bench/ and devstack/ stay out of the image.
COPY requirements/lock.txt requirements/lock.txt
RUN pip install --no-cache-dir -r requirements/lock.txt
COPY contracts contracts
RUN pip install --no-cache-dir --no-deps ./contracts
COPY pyproject.toml README.md ./
COPY dianabot_core dianabot_core
COPY consumers consumers
COPY schedulers schedulers
COPY dianabot_cli dianabot_cli
COPY dianabot_double dianabot_double
COPY migrations migrations
COPY alembic.ini ./
RUN pip install --no-cache-dir --no-deps .

# Root owns the code and the installed packages; the processes only read them.
USER 10001:10001

# /livez, /readyz and /metrics: the consumers on 9464, a scheduler replica on 9465; the double on 8081.
EXPOSE 9464 9465 8081
# The consumers' readiness (database and Kafka); docker-compose.yml sets each service's own probe.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "dianabot_core.probe", "http://127.0.0.1:9464/readyz"]
CMD ["faststream", "run", "consumers.app:app"]
