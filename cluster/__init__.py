"""Run configuration, Ray launch (embedded or remote), job submission, deployment manifests and the CLI."""
