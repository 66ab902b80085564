"""How each request's next token is chosen: penalties, filters and seeded draws (sampler), n samples of one
prompt (parallel_sampling), and decoding constrained to JSON by a grammar (structured_output)."""
