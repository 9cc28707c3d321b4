"""OpenLineage for the pose operators: what was analysed in, the Parquet tables (with their schema) out.

Used only when the OpenLineage provider is installed: its client is imported when facets are asked for.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openlineage.client.event_v2 import Dataset
    from openlineage.client.facet_v2 import DatasetFacet


def ol_dataset(uri: str, schema: Any = None) -> Dataset:
    """An OpenLineage dataset for a URL, a local path or a storage URI (naming per the OpenLineage spec)."""
    from urllib.parse import urlsplit

    from openlineage.client.event_v2 import Dataset

    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        namespace, name = "file", os.path.abspath(parts.path if parts.scheme else uri)
    else:
        netloc = parts.netloc.split("@", 1)[-1]  # Airflow's s3://conn_id@bucket/key: the bucket is the namespace
        namespace, name = f"{parts.scheme}://{netloc}", parts.path.lstrip("/") or "/"
    facets: dict[str, DatasetFacet] = {}
    if schema is not None:
        from openlineage.client.facet_v2 import schema_dataset

        facets["schema"] = schema_dataset.SchemaDatasetFacet(
            fields=[schema_dataset.SchemaDatasetFacetFields(name=f.name, type=str(f.type)) for f in schema]
        )
    return Dataset(namespace=namespace, name=name, facets=facets)


class PoseLineage:
    """OpenLineage facets for the pose operators: inputs are what was analysed, outputs the Parquet tables
    (with a schema facet). Only used when the OpenLineage provider is installed."""

    lineage_inputs: list[str]
    lineage_outputs: list[tuple[str, str]]  # (uri, "keypoints" | "errors")

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        from airflow.providers.openlineage.extractors import OperatorLineage

        from airflow_provider_kakaopose.tables import errors_schema, keypoints_schema

        schemas = {"keypoints": keypoints_schema(), "errors": errors_schema()}
        return OperatorLineage(
            inputs=[ol_dataset(uri) for uri in getattr(self, "lineage_inputs", [])],
            outputs=[ol_dataset(uri, schemas[kind]) for uri, kind in getattr(self, "lineage_outputs", [])],
        )
