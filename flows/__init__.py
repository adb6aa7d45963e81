"""Prefect flows that run vitlab's DVC pipeline.

`flows.dag` runs the DVC stages as Prefect tasks in DVC's own DAG order (on Prefect's thread
pool or a Dask cluster), `flows.sweep` queues and runs a small parameter sweep as DVC
experiments, `flows.serve` serves both as deployments; `flows.proc` runs their commands and
`flows.report` writes their artifacts. DVC stays the authority on what is up to date; the
flows only orchestrate. Nothing is imported here so that `import flows` stays cheap.
"""
