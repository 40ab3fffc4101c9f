"""What differs between the supported Airflow versions (3.1 up to 4), in one place.

Airflow 3.1 (task SDK 1.1) has no ``airflow.sdk.conf`` and no ``airflow.sdk.exceptions``
``AirflowFailException``; there they come from ``airflow.configuration`` and
``airflow.exceptions``, which the 3.1 task runner handles. Newer versions use the SDK's.
"""

from __future__ import annotations

try:
    from airflow.sdk import conf
except ImportError:  # Airflow < 3.2
    from airflow.configuration import conf  # type: ignore[no-redef, assignment, unused-ignore]

try:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # Airflow < 3.2
    from airflow.exceptions import (  # type: ignore[no-redef, assignment, unused-ignore]
        AirflowException,
        AirflowFailException,
    )

__all__ = ["AirflowException", "AirflowFailException", "conf"]
