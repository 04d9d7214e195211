# syntax=docker/dockerfile:1
# Build: docker build -t crisisflow .   Run: docker run -p 8000:8000 -v crisisflow:/app/var crisisflow

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY app ./app
COPY workflows ./workflows
COPY notifiers ./notifiers
COPY migrations ./migrations
RUN pip install .

FROM python:3.11-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    CRISISFLOW_DATABASE_URL=sqlite:////app/var/crisisflow.db
RUN groupadd --system crisisflow && useradd --system --gid crisisflow --home /app crisisflow \
    && mkdir -p /app/var && chown crisisflow:crisisflow /app/var
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER crisisflow
VOLUME ["/app/var"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["crisisflow", "serve", "--host", "0.0.0.0", "--port", "8000"]
