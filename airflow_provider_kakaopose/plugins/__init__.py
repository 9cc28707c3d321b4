"""The provider's Airflow plugin: the receiver of the Pose API's job callbacks (docs/callbacks.md)."""
