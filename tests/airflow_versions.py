"""What the *tests* need to read differently on Airflow 2.11 and 3.x (the provider's own differences are in
``airflow_provider_kakaopose._compat``): where the models live and how extra links are stored."""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_kakaopose._compat import AIRFLOW_V_3_0_PLUS


def dag_bag(folder: str) -> Any:
    """Airflow's DagBag over ``folder`` (3.x: ``airflow.dag_processing.dagbag``, 2.x: ``airflow.models``)."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:
        from airflow.models.dagbag import DagBag
    return DagBag(dag_folder=folder)  # examples are off: AIRFLOW__CORE__LOAD_EXAMPLES=False


def xcom_rows(session: Any, **filters: Any) -> list[tuple[str, str, Any]]:
    """``(task_id, key, value)`` of the XComs in the metadata DB matching ``filters`` (column=value)."""
    if AIRFLOW_V_3_0_PLUS:
        from airflow.models.xcom import XComModel as model

        def value(row: Any) -> Any:
            try:
                return json.loads(row.value)
            except (TypeError, ValueError):
                return row.value
    else:
        from airflow.models.xcom import XCom as model

        def value(row: Any) -> Any:
            return row.value  # Airflow 2's model deserializes on load

    query = session.query(model)
    for column, wanted in filters.items():
        query = query.filter(getattr(model, column) == wanted)
    return [(row.task_id, row.key, value(row)) for row in query]


def asset_condition_objects(dag: Any) -> list[Any]:
    """The Assets (Datasets on 2.x) a DAG's schedule waits for."""
    timetable = dag.timetable
    condition = getattr(timetable, "asset_condition", None) or timetable.dataset_condition
    return list(condition.objects)


def prepare_dag_test(dag: Any) -> None:
    """Airflow 3.0's ``dag.test()`` never writes the DAG to the metadata DB, so the Assets of its outlets are
    never activated and a task with outlets fails ("inactive assets"); parse and sync it first, as the DAG
    processor would (docs/installation.md, "What differs"). Nothing to do on other versions."""
    from airflow_provider_kakaopose._compat import AIRFLOW_V_3_1_PLUS

    if not AIRFLOW_V_3_0_PLUS or AIRFLOW_V_3_1_PLUS:
        return
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.models.dagbag import DagBag

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=dag.fileloc, include_examples=False)
    bag.sync_to_db("dags-folder", None)
