"""The hello route as a plugd plugin in Python (bench/python.sh)."""

from plugd import Plugin, Request

plugin = Plugin("hello-py", "0.1.0")


@plugin.get("/hello")
async def hello(req: Request) -> str:
    return "hello, world\n"


plugin.run()
