"""The ingress deployment: the Serve replica that serves the HTTP API.

Each replica builds its own ``EditService`` and its own FastAPI app (``app.make_app``) when it
starts (Serve's ``__serve_build_asgi_app__``), so nothing is pickled with the class and nothing is
shared at module level. It talks to the queue only through ``contract`` (``IngressQueue``).
"""

import os
import tempfile

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from ..config import Settings
from ..contract.queue_client import IngressQueue
from ..logs import use_serve_handlers
from .app import make_app
from .service import EditService


@serve.deployment(max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Ingress:
    def __init__(self, queue: DeploymentHandle, workers: DeploymentHandle, settings: Settings):
        use_serve_handlers()
        self.workers = workers  # part of the app graph so that Serve deploys the workers
        self.settings = settings
        upload_dir = settings.ingress.upload_dir
        if upload_dir:  # multipart spools files over 1 MB to the temp folder: keep them in the state folder
            os.makedirs(upload_dir, exist_ok=True)
            tempfile.tempdir = upload_dir
        self.service = EditService(IngressQueue(queue, settings.internal_calls == "grpc"), settings)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_app(self.service, self.settings)
