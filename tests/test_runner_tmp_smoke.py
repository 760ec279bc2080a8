async def test_smoke(runner_factory, make_task, start_task, wait_exec, exec_events):
    await runner_factory()
    task = await make_task(command=["echo", "hi"])
    eid = await start_task(task["id"])
    ex = await wait_exec(eid)
    print(ex)
    evs = await exec_events(eid)
    for e in evs: print(e, e.headers)
    assert ex["status"] == "succeeded"
