from setuptools import find_packages, setup

setup(
    name="poller-server",
    version="0.1.0",
    description="Job server for climate-model runs: runners poll it over HTTP for the next run",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["poller_server", "poller_server.*"]),
    install_requires=[
        "tornado>=6.2,<7",
        "msgpack>=1.0",
        "sortedcontainers>=2.4",
        "prometheus-client>=0.17",
        # A faster event loop than the standard one; --event-loop asyncio opts out.
        "uvloop>=0.19",
    ],
    extras_require={
        # orjson lets the benchmark's test run the JSON comparison; the server does not use it.
        "test": ["pytest>=7", "pytest-tornado>=0.8.1", "cryptography>=41", "orjson>=3.9"],
        # scripts/poller-bench also needs wrk and beanstalkd (Debian packages). Its json
        # scenario compares the standard library with orjson, and py-spy profiles servers.
        "bench": ["orjson>=3.9", "py-spy>=0.3.14"],
    },
    entry_points={
        "console_scripts": [
            "poller-server=poller_server.cli:main",
            "poller-recover=poller_server.recover.cli:main",
            "poller=poller_server.poller_cli:main",
            "poller-runner=poller_server.runner:main",
        ],
    },
)
