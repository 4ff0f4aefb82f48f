# The alternative to a bucket: a serve image with one training run baked in at /model.
# The build context is the run's folder:
#   docker build -f deploy/cloudrun/model.Dockerfile -t catvae-jax-model:quickstart runs/quickstart
# then push it and deploy it with `gcloud run deploy` (docs/containers.md).
ARG SERVE_IMAGE=catvae-jax:serve
FROM ${SERVE_IMAGE}
COPY --chown=catvae:catvae . /model
