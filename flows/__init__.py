"""Prefect flows that run vitlab's DVC pipeline.

`flows.dag` runs the DVC stages as Prefect tasks in DVC's own DAG order, `flows.sweep` queues
and runs a small parameter sweep as DVC experiments, and `flows.serve` serves both as
deployments. DVC stays the authority on what is up to date; the flows only orchestrate.
Nothing is imported here so that `import flows` stays cheap.
"""
