"""Offline emulator of the AWS IoT provisioning control plane, with S3 (moto) on the same endpoint."""
