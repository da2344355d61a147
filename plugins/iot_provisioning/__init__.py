"""Airflow adapters for AWS IoT bulk provisioning: hook, waiter, trigger, operator and shared DAG wiring."""
