"""Training, evaluation, analysis, benchmarks and experiments over the models and data pipelines."""
