# The CUDA worker image: the base image brings CUDA and a CUDA build of torch; alignlab leaves it alone
# (no `cpu` extra) and adds bitsandbytes for 8-bit loading.
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime
WORKDIR /opt/alignlab
COPY pyproject.toml README.md ./
COPY pipeline pipeline
COPY workers workers
COPY db db
COPY app app
COPY scripts scripts
RUN pip install --no-cache-dir -e '.[gpu,postgres]'
ENV ALIGNLAB_HOME=/data HF_HOME=/data/hf PYTHONUNBUFFERED=1
# SIGTERM (docker stop, spot preemption) makes the running training stage checkpoint and requeue its job.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "workers", "--queues", "gpu,gpu-80gb,cpu"]
