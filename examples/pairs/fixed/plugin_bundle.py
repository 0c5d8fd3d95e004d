import os
import shutil
import zipfile

MAX_BUNDLE_ENTRIES = 2000


class PluginBundleInstaller:
    """Installs plugin bundles uploaded through the admin console."""

    def __init__(self, plugins_dir):
        self.plugins_dir = plugins_dir

    def _extract(self, bundle, dest):
        root = os.path.realpath(dest)
        for info in bundle.infolist():
            if info.is_dir():
                continue
            target = os.path.realpath(os.path.join(root, info.filename))
            if os.path.commonpath([root, target]) != root:
                raise ValueError(f"bundle entry escapes plugin directory: {info.filename}")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with bundle.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)

    def install(self, bundle_path, plugin_id):
        if not plugin_id.isidentifier():
            raise ValueError("invalid plugin id")
        dest = os.path.join(self.plugins_dir, plugin_id)
        with zipfile.ZipFile(bundle_path) as bundle:
            if len(bundle.infolist()) > MAX_BUNDLE_ENTRIES:
                raise ValueError("bundle has too many entries")
            if "plugin.json" not in bundle.namelist():
                raise ValueError("bundle is missing plugin.json")
            os.makedirs(dest, exist_ok=True)
            self._extract(bundle, dest)
        return dest

    def uninstall(self, plugin_id):
        if not plugin_id.isidentifier():
            raise ValueError("invalid plugin id")
        shutil.rmtree(os.path.join(self.plugins_dir, plugin_id), ignore_errors=True)
