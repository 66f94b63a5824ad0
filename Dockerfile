# One image for every role: `orchestrator api`, `orchestrator worker`,
# `orchestrator downstream`, `orchestrator migrate`, and `celery -A tasks flower`.
# It carries the runtime only: requirements.lock (no test or lint tool, no embedded
# PostgreSQL/Redis: those are requirements-dev.lock), then the package itself, not
# editable, so it runs from site-packages and needs nothing of the source tree.
# tests/e2e/test_image_install.py runs these same steps without a container engine.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A numeric user, so that a runtime that refuses root (runAsNonRoot) can tell.
RUN groupadd --system --gid 10001 orchestrator \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/orchestrator \
       --shell /usr/sbin/nologin orchestrator

WORKDIR /app
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

# .dockerignore keeps .venv, .git, tests and the like out of the context.
COPY . /tmp/src
RUN pip install --no-cache-dir --no-deps /tmp/src && rm -rf /tmp/src

USER 10001:10001
# The API's and the reference services' gunicorn listen on every interface of the container.
ENV ORCHESTRATOR_HOST=0.0.0.0 \
    HOME=/home/orchestrator
EXPOSE 8001 8002
ENTRYPOINT ["orchestrator"]
CMD ["api"]
