-- The inventory lives next to Airflow's metadata, in its own database.
CREATE DATABASE inventory OWNER airflow;
