# saejobs worker image. On a GPU host torch==2.13.0 resolves to the CUDA build.
FROM python:3.11-slim
RUN pip install --no-cache-dir torch==2.13.0
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine engine
COPY cli cli
COPY tasks tasks
COPY db db
COPY worker worker
COPY saejobs saejobs
RUN pip install --no-cache-dir '.[postgres]'
ENV SAEJOBS_HOME=/data
VOLUME /data
ENTRYPOINT ["saejobs"]
