"""Checks a shoal cluster with the real TES client py-tes.

Usage: python check_pytes.py URL1 URL2 URL3

Every answer is parsed by py-tes's own models, which reject unknown keys and wrong types.
py-tes's list_tasks has no filters, so filtered lists are fetched with requests and parsed
with tes.utils.unmarshal into tes.ListTasksResponse. Exits non-zero on the first failure.
"""

import sys
import time

import requests
import tes
from tes.utils import unmarshal

TASKS = 600
TIMEOUT = 120


def phase(text):
    print(f"--- {text}", flush=True)


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def wait_all(client, ids):
    """Waits until every task ends; returns the tasks in MINIMAL view."""
    deadline = time.time() + TIMEOUT
    done = {}
    while len(done) < len(ids):
        check(time.time() < deadline, f"{len(ids) - len(done)} tasks did not end")
        for task in list_all(client, page_size=500):
            if task.id in ids and task.state in ("COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"):
                done[task.id] = task
        time.sleep(0.5)
    return done


def list_all(client, view="MINIMAL", page_size=None):
    tasks, token = [], None
    while True:
        page = client.list_tasks(view=view, page_size=page_size, page_token=token)
        tasks.extend(page.tasks or [])
        token = page.next_page_token
        if not token:
            return tasks


def filtered(url, **params):
    """All pages of a filtered list, each page parsed by py-tes's model."""
    tasks, token = [], ""
    while True:
        query = dict(params, page_token=token, page_size=97)
        response = requests.get(f"{url}/ga4gh/tes/v1/tasks", params=query, timeout=30)
        response.raise_for_status()
        page = unmarshal(response.json(), tes.ListTasksResponse)
        tasks.extend(page.tasks or [])
        token = page.next_page_token
        if not token:
            return tasks


def main(urls):
    clients = [tes.HTTPClient(url, timeout=30) for url in urls]

    phase("service-info on every node")
    for client in clients:
        info = client.get_service_info()
        check(info.type["artifact"] == "tes", info)
        check("s3" in info.storage, info)

    phase("create on each node, wait, and get FULL on every node")
    for i, client in enumerate(clients):
        task = tes.Task(
            name=f"hello-{i}",
            executors=[tes.Executor(image="busybox", command=["sh", "-c", f"echo hello from {i}"])],
            tags={"suite": "py-tes"},
        )
        task_id = client.create_task(task)
        done = client.wait(task_id, timeout=TIMEOUT)
        check(done.state == "COMPLETE", done)
        for reader in clients:
            full = reader.get_task(task_id, view="FULL")
            check(full.state == "COMPLETE", full)
            check(full.logs[0].logs[0].stdout == f"hello from {i}\n", full)
            check(full.executors[0].command[-1] == f"echo hello from {i}", full)
            check(full.tags == {"suite": "py-tes"}, full)
            check(full.creation_time is not None and full.logs[0].end_time is not None, full)
            basic = reader.get_task(task_id, view="BASIC")
            check(basic.logs[0].logs[0].stdout is None, basic)
            minimal = reader.get_task(task_id, view="MINIMAL")
            check(minimal.name is None and minimal.state == "COMPLETE", minimal)

    phase(f"{TASKS} tasks through the three nodes")
    ids = []
    for i in range(TASKS):
        tags = {"mod3": str(i % 3)}
        if i % 10 == 0:
            tags["tenth"] = ""
        script = "exit 1" if i % 10 == 0 else "true"
        task = tes.Task(
            name=f"bulk-{'even' if i % 2 == 0 else 'odd'}-{i}",
            executors=[tes.Executor(image="busybox", command=["sh", "-c", script])],
            tags=tags,
        )
        ids.append(clients[i % 3].create_task(task))
    ended = wait_all(clients[0], set(ids))
    failed = {i for i, task_id in enumerate(ids) if ended[task_id].state == "EXECUTOR_ERROR"}
    check(failed == set(range(0, TASKS, 10)), f"failed: {sorted(failed)[:20]}")

    phase("paging to the end through py-tes on every node: all, newest first, no repeats")
    for client in clients:
        for page_size in (None, 1000, 77):
            listed = list_all(client, view="BASIC", page_size=page_size)
            listed_ids = [t.id for t in listed]
            check(len(listed_ids) == len(set(listed_ids)), "a task listed twice")
            bulk = [t for t in listed_ids if t in set(ids)]
            check(bulk == list(reversed(ids)), "bulk tasks not newest first")
            times = [t.creation_time for t in listed]
            check(times == sorted(times, reverse=True), "creation times not descending")
    first = clients[0].list_tasks(view="MINIMAL")
    check(len(first.tasks) == 256 and first.next_page_token, "default page size is not 256")

    phase("every filter, alone and combined")
    url = urls[1]
    expect = lambda keep: [ids[i] for i in reversed(range(TASKS)) if keep(i)]
    got = lambda **params: [t.id for t in filtered(url, **params)]
    check(got(name_prefix="bulk-even-") == expect(lambda i: i % 2 == 0), "name_prefix")
    check(got(state="EXECUTOR_ERROR") == expect(lambda i: i % 10 == 0), "state")
    check(got(tag_key="mod3", tag_value="1") == expect(lambda i: i % 3 == 1), "tag")
    check(got(tag_key="tenth") == expect(lambda i: i % 10 == 0), "tag key only")
    check(got(tag_key=["mod3", "tenth"], tag_value=["0", ""]) == expect(lambda i: i % 30 == 0), "two tags")
    check(
        got(name_prefix="bulk-odd-", state="COMPLETE", tag_key="mod3", tag_value="2")
        == expect(lambda i: i % 2 == 1 and i % 3 == 2),
        "combined",
    )
    check(got(tag_key="mod3", tag_value="7") == [], "no match")
    full = filtered(url, name_prefix="bulk-odd-1", view="FULL")
    check(all(t.logs[0].system_logs is not None for t in full), "FULL through list")

    phase("cancel a running task through py-tes")
    client = clients[2]
    task_id = client.create_task(
        tes.Task(executors=[tes.Executor(image="busybox", command=["sh", "-c", "sleep 300"])])
    )
    deadline = time.time() + TIMEOUT
    while client.get_task(task_id, view="MINIMAL").state != "RUNNING":
        check(time.time() < deadline, "the task never ran")
        time.sleep(0.2)
    client.cancel_task(task_id)
    done = clients[0].wait(task_id, timeout=30)
    while done.state == "CANCELING":
        time.sleep(0.2)
        done = clients[0].get_task(task_id, view="MINIMAL")
    check(done.state == "CANCELED", done)

    phase("an unknown task is an HTTP 404")
    try:
        clients[0].get_task("NOSUCHTASK")
        check(False, "no error for an unknown task")
    except requests.exceptions.HTTPError as error:
        check(error.response.status_code == 404, error)
    print("py-tes: all checks passed", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
