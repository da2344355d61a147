"""The CDF provisioning API as a FastAPI app (mounted in Airflow's API server, or standalone)."""
