"""``pip install -e .`` installs the JupyterLab extension and the server extension's config too.

setuptools writes a project's ``data_files`` (``share/jupyter/labextensions/mlaas4hep-lab``,
``etc/jupyter/jupyter_server_config.d/mlaas4hep_lab.json``) into regular wheels but leaves them out of editable
ones: its ``editable_wheel`` asks the distribution for ``has_data()``, which setuptools' Distribution calls
``has_data_files()``. This command supplies the missing name, so an editable install copies the built
extension and the config into the environment as a regular install does (rebuild, then reinstall, to update
the copy; or ``jupyter labextension develop --overwrite .`` for a link). On a setuptools that has the name,
it changes nothing.

Build time only (pyproject.toml ``[tool.setuptools.cmdclass]``, loaded by file so the package is not
imported); inside the package so that ``pyproject.toml`` and ``mlaas4hep_lab/`` are all an install needs.
"""

from setuptools.command.editable_wheel import editable_wheel as _editable_wheel


class editable_wheel(_editable_wheel):  # noqa: N801 - the command's own name
    def run(self):
        dist = self.distribution
        if not hasattr(dist, "has_data"):
            dist.has_data = dist.has_data_files
        super().run()
