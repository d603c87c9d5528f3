"""Python code generated from the repository's proto/ppp/ (see generate.sh)."""
