"""Training: `loop.train_and_evaluate(config, workdir)` runs the loop; `steps` holds the pure,
donated train and eval steps; `checkpoint`, `workdir` and `lock` keep a run's files; `hooks` and
`log` are what the loop reports through. Readers of a trained model need only `checkpoint` and
`state` (neither imports the loop, the data pipeline or the losses)."""
