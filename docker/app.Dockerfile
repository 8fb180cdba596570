# The CPU image: dashboard and recorder (they never load a model; torch comes as the small CPU wheel because the
# package depends on it).
FROM python:3.11-slim
WORKDIR /opt/alignlab
RUN useradd --create-home --uid 1000 alignlab && mkdir -p /data && chown alignlab /data
COPY pyproject.toml README.md ./
COPY pipeline pipeline
COPY workers workers
COPY db db
COPY app app
COPY .streamlit .streamlit
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -e '.[cpu,postgres]'
ENV ALIGNLAB_HOME=/data PYTHONUNBUFFERED=1
USER alignlab
EXPOSE 8501
# Inside the container the dashboard listens on 0.0.0.0, so it requires a login (ALIGNLAB_DASHBOARD_PASSWORD or
# OIDC); compose publishes it on the host's 127.0.0.1 only.
CMD ["sh", "-c", "alignlab db upgrade && exec streamlit run app/server.py --server.address=0.0.0.0 --server.port=8501 --server.headless=true --browser.gatherUsageStats=false"]
