"""What the *tests* need to read differently on Airflow 2.11 and 3.x (the provider's own differences are in
``airflow_provider_kakaopose._compat``): where the models live and how extra links are stored."""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_kakaopose._compat import AIRFLOW_V_3_0_PLUS, LINKS_PUSHED_AS_XCOM


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


def job_links(dag_run: Any, dag: Any) -> dict[str, str]:
    """The "Pose job result" link of each task of a finished run, as the UI gets it: Airflow 3 stores what the
    worker computed when the try ended as an XCom; Airflow 2's webserver calls ``get_link`` with the task
    instance's key."""
    from airflow.utils.session import create_session

    from airflow_provider_kakaopose.operators.pose import KakaoPoseJobLink

    link = KakaoPoseJobLink()
    if LINKS_PUSHED_AS_XCOM:
        with create_session() as session:
            rows = xcom_rows(session, dag_id=dag_run.dag_id, run_id=dag_run.run_id, key=link.xcom_key)
        return {task_id: value for task_id, _, value in rows}
    links = {}
    for ti in dag_run.get_task_instances():
        task = dag.get_task(ti.task_id)
        if any(isinstance(x, KakaoPoseJobLink) for x in task.operator_extra_links):
            links[ti.task_id] = link.get_link(task, ti_key=ti.key)
    return links


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
