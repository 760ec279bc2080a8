async def test_create_and_get_task(api, make_task):
    task = await make_task()
    got = await api.call("task", "get", {"id": task["id"]})
    assert got == task
