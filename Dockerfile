# The reference app's image: the HTTP app (gunicorn), its migrations and the
# `flask signalbus listen` sidecar all run from it; see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLASK_APP=refapp

WORKDIR /app
COPY . .
# refapp is not installed by pip: flask --app refapp and gunicorn import it from the
# working directory, /app, where its migrations/ are too.
RUN pip install -e '.[deploy]' \
    && useradd --system --no-create-home --shell /usr/sbin/nologin app

USER app
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "refapp:create_app()"]
