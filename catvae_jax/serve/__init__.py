"""The HTTP generator service: `python -m catvae_jax.serve --workdir W [--host H] [--port P]`.

- `__main__`: the command (its flags, the listening socket, uvicorn).
- `app`: `create_app(workdir)`, the FastAPI app: pages and grids, reconstruction, health and
  metrics, each a router.
- `service`: the loaded model, its warm-up and the compute slots the request threads share.
- `metrics`: the Prometheus series and the middleware that times every request.
- `static/`: the page's HTML.
"""
