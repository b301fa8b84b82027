# One image for every modelstream service: `modelstream run <service>`.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY modelstream ./modelstream
COPY services ./services
COPY schemas ./schemas
# /keys belongs to the service user, so the `keys` volume starts out owned by it: the keys
# written there (0600) are readable by the services, which run as that user.
RUN pip install ".[extensions]" && useradd --create-home --uid 10001 modelstream \
    && mkdir /keys && chown modelstream /keys
USER modelstream
ENTRYPOINT ["modelstream"]
CMD ["--help"]
