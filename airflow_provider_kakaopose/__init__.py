"""Apache Airflow provider for the Kakao Brain Pose API.

Importing this package is cheap: it pulls in neither Airflow nor pyarrow. The hook lives in
:mod:`airflow_provider_kakaopose.hooks.pose`, the API emulator in :mod:`airflow_provider_kakaopose.emulator`.
"""

__version__ = "0.4.0"

__all__ = ["__version__"]
