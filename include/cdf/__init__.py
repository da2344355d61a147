"""The CDF provisioning API's domain: templates, extensions, things, bulk (free of Airflow)."""
