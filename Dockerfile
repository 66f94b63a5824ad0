# One image for every role: `orchestrator api`, `orchestrator worker`,
# `orchestrator downstream`, `orchestrator migrate`.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY . .
RUN pip install --no-cache-dir --no-deps . && useradd --create-home orchestrator
USER orchestrator
ENV ORCHESTRATOR_HOST=0.0.0.0
EXPOSE 8001 8002
ENTRYPOINT ["orchestrator"]
CMD ["api"]
