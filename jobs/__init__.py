"""Entry points only, a few lines each: batch, serve (jobs.serve:app), demo, make_tiny_model, bench/."""
