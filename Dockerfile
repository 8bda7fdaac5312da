# GPU node image: Ray's own GPU image of the pinned Ray version (CUDA, Python 3.11, ray[serve]) plus
# this project. Build and run: docs/deployment.md, "Container image". Not built in this project's CI (no Docker
# there); tests/unit/test_deploy_files.py checks what can be checked without building it.
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /home/ray/qwen-image-edit
# Dependencies first, so a code change does not reinstall torch: pyproject.toml pins ray[serve]
# to the image's own version, so pip keeps Ray as it is.
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users serve_app ./serve_app
COPY --chown=ray:users config ./config
RUN pip install --no-cache-dir .

# No usage reports; weights come from the mounted Hugging Face cache, never a download.
ENV RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# The state folder (jobs database, results, key file): mount a volume here.
VOLUME ["/home/ray/qwen-image-edit/state"]
# HTTP API, Ray dashboard, Ray GCS (a head node in a cluster)
EXPOSE 8000 8265 6379
CMD ["qwen-serve", "config/serve.gpu.yaml"]
