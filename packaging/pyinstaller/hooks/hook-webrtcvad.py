# The module comes from the webrtcvad-wheels distribution: the stock hook asks for the metadata of
# "webrtcvad", which is not installed, and stops the build.
from PyInstaller.utils.hooks import copy_metadata

datas = copy_metadata("webrtcvad-wheels")
