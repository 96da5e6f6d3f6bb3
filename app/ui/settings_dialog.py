"""The settings dialog: audio devices, connection, conversation and privacy, on the layered settings.

What the dialog shows is the effective value of each setting (:func:`app.config.load_settings`).
Pressing Save checks every field with the same checks the settings files get
(:func:`app.config.validate_setting`) plus the rules that span fields
(:func:`app.settings_rules.cross_field_problems`: a custom backend needs a URL, Azure needs a
resource and a deployment, the cloud backends need an API key; the launcher refuses with the same
sentences); nothing is written until all of them pass. Then only the values the user changed are
written, one atomic :func:`app.config.save_user_setting` each, and
:attr:`SettingsDialog.settings_saved` fires. The choice boxes list the schema's choices with their
labels (:attr:`app.config.Setting.choices`).

Keys the site policy locks are shown disabled with a note and are never written; values that the
environment or the command line override are shown with a note saying so. The API key goes only to
the OS keyring (:data:`app.config.secrets`), never to a settings file.

Connection fields that the chosen backend does not use are disabled, and edits left in them are
neither checked nor saved: a half-typed Azure name must not block saving an OpenAI setup.

The Tickets page points the app at the company's ticket system: it shows only the fields the chosen
system uses (:data:`app.ui.tickets_page.TICKET_USED_BY`; the others are hidden, and neither checked
nor saved), and the system's credential, which goes only to the OS keyring
(:func:`app.ticket_systems.store_ticket_secret`). Test connection tries the fields as typed, in a
worker thread (:class:`app.ui.tickets_page.ConnectionTest`). Remove credential deletes the chosen
system's stored credential after the user confirms; it is off while none is stored or while the site
policy locks the ticket settings (the administrator set the system up). The page also turns on the
ticket system's own knowledge articles (``kb.ticket_system_articles``), a box that is off, with the
reason beside it, while the chosen system has none (:func:`app.ui.tickets_page.articles_hint`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QCloseEvent, QHideEvent, QShowEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.audio.devices import AudioDevice, DeviceError, Direction, list_devices, match_device
from app.audio.level_probe import InputLevelProbe, play_test_sound
from app.config import (
    SETTINGS,
    TICKET_SYSTEMS_WITH_ARTICLES,
    ConfigError,
    LoadedSettings,
    SecretStoreError,
    TicketSettings,
    Value,
    load_settings,
    save_user_setting,
    secrets,
    typed_settings,
    validate_setting,
)
from app.realtime.endpoint import API_KEY_ENV
from app.settings_rules import API_KEY_FIELD, cross_field_problems
from app.ticket_systems import (
    SECRET_ENV,
    delete_ticket_secret,
    store_ticket_secret,
    stored_ticket_secret,
    system_name,
)
from app.tools.connectors import ConnectorError
from app.ui.level_meter import FLOOR_DBFS, LevelMeter
from app.ui.tickets_page import (
    ARTICLES_KEY,
    CREDENTIAL_LABELS,
    DELIVERY_ONLY_KEYS,
    NO_CREDENTIAL_LABEL,
    TICKET_REQUIRED,
    TICKET_SECRET_FIELD,
    TICKET_USED_BY,
    USER_LABELS,
    ConnectionTest,
    articles_hint,
)

__all__ = [
    "API_KEY_FIELD",
    "LOCKED_NOTE",
    "SYSTEM_DEFAULT_LABEL",
    "TEST_CONNECTION_LABEL",
    "TICKET_SECRET_FIELD",
    "FieldRow",
    "SettingsDialog",
]

SYSTEM_DEFAULT_LABEL: Final = "(system default)"
NOT_CONNECTED_SUFFIX: Final = " (not connected)"
LOCKED_NOTE: Final = "Set by your IT administrator"
LEVEL_REFRESH_MS: Final = 50  # 20 Hz: smooth to the eye, cheap for the GUI thread
TEST_CONNECTION_LABEL: Final = "Test c&onnection"
VOICES: Final = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "marin", "sage", "shimmer", "verse")

# The backends that use each connection field; a field not listed here is used by all of them.
_USED_BY: Final[Mapping[str, frozenset[str]]] = {
    "endpoint.model": frozenset({"openai"}),
    "endpoint.azure_resource": frozenset({"azure"}),
    "endpoint.azure_deployment": frozenset({"azure"}),
    "endpoint.url": frozenset({"custom"}),
    "endpoint.session_minutes": frozenset({"custom"}),
    "endpoint.token_url": frozenset({"openai", "azure", "custom"}),
    "endpoint.token_auth": frozenset({"openai", "azure", "custom"}),
    API_KEY_FIELD: frozenset({"openai", "azure", "custom"}),
}

# Red reads as "wrong" on light and dark themes alike; every other colour comes from the palette.
_INVALID_STYLE: Final = '*[invalid="true"] { border: 2px solid #d32f2f; border-radius: 3px; }'


@dataclass(eq=False)
class FieldRow:
    """One setting's row: its widgets, how to read the raw value, and what it held at the start.

    ``note`` says why a field is locked or overridden; ``error`` says what is wrong with it.
    """

    key: str
    name: str  # as the user sees it, for messages
    label: QLabel
    widget: QWidget
    read: Callable[[], object]
    note: QLabel
    error: QLabel
    description: str
    initial: object = None


def _combo(key: str, parent: QWidget) -> QComboBox:
    """A box of the setting's choices, each shown by its label and holding its value."""
    combo = QComboBox(parent)
    for value, text in SETTINGS[key].choices:
        combo.addItem(text, value)
    return combo


def _select(combo: QComboBox, value: object) -> None:
    index = combo.findData(value)
    if index >= 0:
        combo.setCurrentIndex(index)


def _data(combo: QComboBox) -> str:
    value = combo.currentData()
    return value if isinstance(value, str) else ""


def _repolish(widget: QWidget) -> None:
    # A dynamic property only restyles once the style re-reads it.
    style = widget.style()
    style.unpolish(widget)
    style.polish(widget)
    widget.update()


class SettingsDialog(QDialog):
    """Edit the user's settings. ``settings_saved`` fires after a save that changed something, and
    after a ticket credential is removed; :attr:`last_saved` then names what changed.

    ``environ`` decides where the files are and whether an API key comes from the environment; a
    ``settings`` given must have been loaded with the same one.
    """

    settings_saved = Signal()

    def __init__(
        self,
        settings: LoadedSettings | None = None,
        parent: QWidget | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        super().__init__(parent)
        self._environ = environ
        self._settings = settings if settings is not None else load_settings(environ=environ)
        self._fields: dict[str, FieldRow] = {}
        self._focus_chain: list[QWidget] = []
        self._probe: InputLevelProbe | None = None
        self._key_removed = False
        # The keys (settings, API_KEY_FIELD, TICKET_SECRET_FIELD) the last settings_saved was for.
        self.last_saved: frozenset[str] = frozenset()
        self.remove_credential_box: QMessageBox | None = None
        self._devices, self._device_problem = self._list_devices()
        self._level_timer = QTimer(self)
        self._level_timer.setInterval(LEVEL_REFRESH_MS)
        self._level_timer.timeout.connect(self._show_level)

        self.setWindowTitle("Helpdesk Voice settings")
        self.setAccessibleName("Helpdesk Voice settings")
        self.setStyleSheet(_INVALID_STYLE)

        self.message_label = QLabel(self)
        self.message_label.setWordWrap(True)
        self.message_label.setAccessibleName("Problems with the settings")
        self.message_label.hide()

        self.problems_label = QLabel(self)
        self.problems_label.setWordWrap(True)
        self.problems_label.setAccessibleName("Problems reading the settings files")
        if self._settings.problems:
            self.problems_label.setText(
                "Some settings could not be read and built-in values are used:\n"
                + "\n".join(f"• {problem}" for problem in self._settings.problems)
            )
        else:
            self.problems_label.hide()

        self.tabs = QTabWidget(self)
        self.tabs.setAccessibleName("Settings sections")
        self.audio_page = self._build_audio_page()
        self.connection_page = self._build_connection_page()
        self.conversation_page = self._build_conversation_page()
        self.privacy_page = self._build_privacy_page()
        self.tickets_page = self._build_tickets_page()
        self.tabs.addTab(self.audio_page, "&Audio")
        self.tabs.addTab(self.connection_page, "Co&nnection")
        self.tabs.addTab(self.conversation_page, "Conve&rsation")
        self.tabs.addTab(self.privacy_page, "&Privacy")
        self.tabs.addTab(self.tickets_page, "&Tickets")

        self.button_box = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel, self
        )
        self.save_button = self.button_box.button(QDialogButtonBox.StandardButton.Save)
        self.save_button.setText("&Save")
        self.save_button.setAccessibleName("Save settings")
        self.save_button.setDefault(True)
        cancel = self.button_box.button(QDialogButtonBox.StandardButton.Cancel)
        cancel.setAccessibleName("Close without saving")
        self.button_box.accepted.connect(self.accept)
        self.button_box.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(self.problems_label)
        layout.addWidget(self.message_label)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.button_box)

        for key, field in self._fields.items():
            field.initial = field.read()
            self._show_origin(key, field)
        # Taken after the lock note joined it: the hint for the chosen system goes after both.
        self._articles_description = self._fields[ARTICLES_KEY].description
        self._update_enabled()
        self._update_key_status()
        self._update_ticket_secret_status()
        self.backend_combo.currentIndexChanged.connect(self._update_enabled)
        self.ticket_system_combo.currentIndexChanged.connect(self._ticket_system_changed)
        self.turn_detection_combo.currentIndexChanged.connect(self._update_enabled)
        self.input_combo.currentIndexChanged.connect(self._refresh_probe)
        self.tabs.currentChanged.connect(self._refresh_probe)
        self.finished.connect(self.stop_audio)
        self.finished.connect(self.connection_test.cancel)

        chain = [self.tabs, *self._focus_chain, self.save_button, cancel]
        for first, second in itertools.pairwise(chain):
            QWidget.setTabOrder(first, second)

    # ------------------------------------------------------------------------------------------
    # Building the pages
    # ------------------------------------------------------------------------------------------
    def _add_field(
        self,
        form: QFormLayout,
        key: str,
        text: str,
        widget: QWidget,
        read: Callable[[], object],
        *,
        extra: Sequence[QWidget] = (),
    ) -> FieldRow:
        """One form row: a mnemonic label, the widget with any extras, and a note and error line."""
        name = text.replace("&", "").rstrip(":")
        label = QLabel(text, widget.parentWidget())
        label.setBuddy(widget)
        widget.setAccessibleName(name)
        description = SETTINGS[key].help if key in SETTINGS else ""
        widget.setAccessibleDescription(description)
        note = QLabel(widget.parentWidget())
        note.setWordWrap(True)
        note.hide()
        error = QLabel(widget.parentWidget())
        error.setWordWrap(True)
        error.setAccessibleName(f"{name} error")
        font = error.font()
        font.setBold(True)
        error.setFont(font)
        error.hide()
        column = QVBoxLayout()
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        column.addWidget(widget)
        for item in extra:
            column.addWidget(item)
        column.addWidget(note)
        column.addWidget(error)
        form.addRow(label, column)
        self._focus_chain.append(widget)
        field = FieldRow(key, name, label, widget, read, note, error, description)
        self._fields[key] = field
        return field

    def _build_audio_page(self) -> QWidget:
        page = QWidget(self)
        form = QFormLayout(page)

        self.input_combo = QComboBox(page)
        self._fill_devices(self.input_combo, "input", self._settings.value("audio.input_device"))
        self.level_meter = LevelMeter(page)
        self.level_meter.set_label("Microphone level")
        self.level_status = QLabel(page)
        self.level_status.setWordWrap(True)
        self.level_status.setAccessibleName("Microphone check")
        meter_row = QWidget(page)
        row = QHBoxLayout(meter_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.level_meter, 1)
        row.addWidget(self.level_status, 1)
        self._add_field(
            form,
            "audio.input_device",
            "&Input device:",
            self.input_combo,
            lambda: _data(self.input_combo),
            extra=(meter_row,),
        )

        self.output_combo = QComboBox(page)
        self._fill_devices(self.output_combo, "output", self._settings.value("audio.output_device"))
        self.test_sound_button = QPushButton("Play test so&und", page)
        self.test_sound_button.setAccessibleName("Play a test sound on the selected output device")
        self.test_sound_button.clicked.connect(self.play_test_sound)
        self.test_sound_status = QLabel(page)
        self.test_sound_status.setWordWrap(True)
        self.test_sound_status.setAccessibleName("Test sound result")
        sound_row = QWidget(page)
        row = QHBoxLayout(sound_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.test_sound_button)
        row.addWidget(self.test_sound_status, 1)
        self._add_field(
            form,
            "audio.output_device",
            "&Output device:",
            self.output_combo,
            lambda: _data(self.output_combo),
            extra=(sound_row,),
        )
        self._focus_chain.append(self.test_sound_button)

        self.echo_check = QCheckBox("Remove the assistant's &echo from the microphone", page)
        self.echo_check.setToolTip(
            "Echo cancellation: needed with laptop speakers, harmless with a headset. "
            "Without it the assistant can hear itself and stop talking."
        )
        self.echo_check.setChecked(bool(self._settings.value("audio.echo_cancellation")))
        self._add_field(
            form, "audio.echo_cancellation", "Echo cancellation:", self.echo_check, self.echo_check.isChecked
        )
        if self._device_problem:
            problem = QLabel(self._device_problem, page)
            problem.setWordWrap(True)
            form.addRow(problem)
        return page

    def _build_connection_page(self) -> QWidget:
        page = QWidget(self)
        form = QFormLayout(page)
        s = self._settings

        self.backend_combo = _combo("backend", page)
        _select(self.backend_combo, s.value("backend"))
        self._add_field(form, "backend", "&Backend:", self.backend_combo, lambda: _data(self.backend_combo))

        self.model_edit = self._line_edit(page, s.value("endpoint.model"), "gpt-realtime")
        self._add_field(form, "endpoint.model", "&Model:", self.model_edit, self._text(self.model_edit))

        self.azure_resource_edit = self._line_edit(page, s.value("endpoint.azure_resource"), "my-resource")
        self._add_field(
            form,
            "endpoint.azure_resource",
            "Azure r&esource:",
            self.azure_resource_edit,
            self._text(self.azure_resource_edit),
        )

        self.azure_deployment_edit = self._line_edit(
            page, s.value("endpoint.azure_deployment"), "gpt-realtime"
        )
        self._add_field(
            form,
            "endpoint.azure_deployment",
            "Azure &deployment:",
            self.azure_deployment_edit,
            self._text(self.azure_deployment_edit),
        )

        self.url_edit = self._line_edit(page, s.value("endpoint.url"), "wss://voice.example.com/v1/realtime")
        self._add_field(form, "endpoint.url", "Custom &URL:", self.url_edit, self._text(self.url_edit))

        # Empty, not "0.0", when the server's cap is not known; an empty field reads back as 0.
        minutes = s.value("endpoint.session_minutes")
        shown = f"{minutes:g}" if isinstance(minutes, int | float) and minutes > 0 else ""
        self.session_minutes_edit = self._line_edit(page, shown, "not known")
        self._add_field(
            form,
            "endpoint.session_minutes",
            "Session &length:",
            self.session_minutes_edit,
            self._text(self.session_minutes_edit),
            extra=(QLabel("minutes the server allows a session (empty: not known)", page),),
        )

        self.token_url_edit = self._line_edit(
            page, s.value("endpoint.token_url"), "https://tokens.example.com/v1/realtime/client_secrets"
        )
        token_field = self._add_field(
            form,
            "endpoint.token_url",
            "Token serv&ice:",
            self.token_url_edit,
            self._text(self.token_url_edit),
        )
        # Set, it replaces the API key: the laptop then holds only its own device credential.
        token_field.description = (
            "Your company's service for short-lived keys; with it, no API key is stored here"
        )
        self.token_url_edit.setAccessibleDescription(token_field.description)
        self.token_url_edit.textChanged.connect(self._update_enabled)

        self.token_auth_combo = _combo("endpoint.token_auth", page)
        _select(self.token_auth_combo, s.value("endpoint.token_auth"))
        auth_field = self._add_field(
            form,
            "endpoint.token_auth",
            "Sign in &with:",
            self.token_auth_combo,
            lambda: _data(self.token_auth_combo),
        )
        auth_field.description = "How this computer proves itself to the token service"
        self.token_auth_combo.setAccessibleDescription(auth_field.description)

        self.api_key_edit = QLineEdit(page)
        self.api_key_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.api_key_edit.setPlaceholderText("Type or paste a new key; leave empty to keep the stored one")
        self.key_status_label, self.remove_key_button, key_row = _status_and_remove_button(
            page, "API key status", "Remo&ve key", "Remove the stored API key from the keyring"
        )
        self.remove_key_button.clicked.connect(self.remove_api_key)
        key_field = self._add_field(
            form, API_KEY_FIELD, "API &key:", self.api_key_edit, self.api_key_edit.text, extra=(key_row,)
        )
        key_field.description = "Kept in the system keyring, never in a settings file"
        self.api_key_edit.setAccessibleDescription(key_field.description)
        self._focus_chain.append(self.remove_key_button)
        return page

    def _build_conversation_page(self) -> QWidget:
        page = QWidget(self)
        form = QFormLayout(page)
        s = self._settings

        self.voice_combo = QComboBox(page)
        self.voice_combo.setEditable(True)
        self.voice_combo.addItems(list(VOICES))
        self.voice_combo.setCurrentText(str(s.value("voice")))
        self._add_field(
            form, "voice", "&Voice:", self.voice_combo, lambda: self.voice_combo.currentText().strip()
        )

        self.instructions_edit = QPlainTextEdit(page)
        self.instructions_edit.setPlainText(str(s.value("instructions")))
        self.instructions_edit.setTabChangesFocus(
            True
        )  # Tab leaves the box, so the form stays keyboard-usable
        self.instructions_edit.setMinimumHeight(110)
        self._add_field(
            form, "instructions", "&Instructions:", self.instructions_edit, self.instructions_edit.toPlainText
        )

        self.turn_detection_combo = _combo("turn_detection", page)
        _select(self.turn_detection_combo, s.value("turn_detection"))
        self._add_field(
            form,
            "turn_detection",
            "Turn &detection:",
            self.turn_detection_combo,
            lambda: _data(self.turn_detection_combo),
        )

        self.eagerness_combo = _combo("eagerness", page)
        _select(self.eagerness_combo, s.value("eagerness"))
        self._add_field(
            form, "eagerness", "&Eagerness:", self.eagerness_combo, lambda: _data(self.eagerness_combo)
        )

        self.sensitivity_combo = _combo("barge_in.sensitivity", page)
        _select(self.sensitivity_combo, s.value("barge_in.sensitivity"))
        self._add_field(
            form,
            "barge_in.sensitivity",
            "&Barge-in sensitivity:",
            self.sensitivity_combo,
            lambda: _data(self.sensitivity_combo),
        )

        self.push_to_talk_check = QCheckBox("&Use push to talk (hold a key while you speak)", page)
        self.push_to_talk_check.setChecked(bool(s.value("push_to_talk")))
        self._add_field(
            form, "push_to_talk", "Push to talk:", self.push_to_talk_check, self.push_to_talk_check.isChecked
        )
        self.start_at_login_check = QCheckBox("Start Helpdesk Voice when I &log in", page)
        self.start_at_login_check.setChecked(bool(s.value("start_at_login")))
        self._add_field(
            form,
            "start_at_login",
            "Start at login:",
            self.start_at_login_check,
            self.start_at_login_check.isChecked,
        )
        return page

    def _build_privacy_page(self) -> QWidget:
        page = QWidget(self)
        form = QFormLayout(page)
        self.retention_edit = self._line_edit(
            page,
            str(self._settings.value("transcript.retention_days")),
            str(SETTINGS["transcript.retention_days"].default),
        )
        days = QLabel("days (0 to 3650)", page)
        self._add_field(
            form,
            "transcript.retention_days",
            "&Keep transcripts for:",
            self.retention_edit,
            self._text(self.retention_edit),
            extra=(days,),
        )
        return page

    def _build_tickets_page(self) -> QWidget:
        page = QWidget(self)
        form = QFormLayout(page)
        self._tickets_form = form
        s = self._settings

        self.ticket_system_combo = _combo("tickets.system", page)
        _select(self.ticket_system_combo, s.value("tickets.system"))
        self._add_field(
            form,
            "tickets.system",
            "Ticket s&ystem:",
            self.ticket_system_combo,
            lambda: _data(self.ticket_system_combo),
        )
        self.ticket_url_edit = self._ticket_edit(
            form, "tickets.url", "A&ddress:", "https://rt.example.com/rt"
        )
        self.ticket_queue_edit = self._ticket_edit(form, "tickets.queue", "&Queue:", "General")
        self.ticket_user_edit = self._ticket_edit(form, "tickets.user", "API &user:", "helpdesk-voice")
        self.ticket_group_edit = self._ticket_edit(
            form, "tickets.assignment_group", "Assignment &group:", "Service Desk (optional)"
        )
        self.ticket_desk_edit = self._ticket_edit(form, "tickets.service_desk_id", "Service des&k ID:", "1")
        self.ticket_request_type_edit = self._ticket_edit(
            form, "tickets.request_type_id", "Request type &ID:", "10"
        )

        self.ticket_secret_edit = QLineEdit(page)
        self.ticket_secret_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.ticket_secret_edit.setPlaceholderText("Type or paste it; leave empty to keep the stored one")
        self.ticket_secret_status, self.remove_credential_button, secret_row = _status_and_remove_button(
            page,
            "Credential status",
            "Remo&ve credential",
            "Remove the ticket system's stored credential from the keyring",
        )
        self.remove_credential_button.clicked.connect(self.ask_remove_ticket_secret)
        secret_field = self._add_field(
            form,
            TICKET_SECRET_FIELD,
            NO_CREDENTIAL_LABEL,
            self.ticket_secret_edit,
            self.ticket_secret_edit.text,
            extra=(secret_row,),
        )
        secret_field.description = "Kept in the system keyring, never in a settings file"
        self.ticket_secret_edit.setAccessibleDescription(secret_field.description)
        self._focus_chain.append(self.remove_credential_button)

        self.ticket_contact_edit = self._ticket_edit(
            form, "tickets.contact", "Your e-&mail address:", "jane.doe@example.com"
        )

        self.test_connection_button = QPushButton(TEST_CONNECTION_LABEL, page)
        self.test_connection_button.setAccessibleName("Test the connection to the ticket system")
        self.test_connection_button.clicked.connect(self.test_connection)
        self.connection_status = QLabel(page)
        self.connection_status.setWordWrap(True)
        self.connection_status.setAccessibleName("Connection test result")
        test_row = QWidget(page)
        row = QHBoxLayout(test_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.test_connection_button)
        row.addWidget(self.connection_status, 1)
        form.addRow(test_row)
        self._focus_chain.append(self.test_connection_button)
        self.connection_test = ConnectionTest(self)
        self.connection_test.finished.connect(self._connection_tested)

        self.ticket_articles_check = QCheckBox("Use the ticket system's know&ledge articles", page)
        self.ticket_articles_check.setToolTip(
            "The assistant also searches the ticket system's own knowledge base (Request Tracker "
            "articles, ServiceNow knowledge) and can walk you through its articles. They are copied "
            "to this computer and kept up to date every few minutes."
        )
        self.ticket_articles_check.setChecked(bool(s.value(ARTICLES_KEY)))
        self.ticket_articles_hint = QLabel(page)
        self.ticket_articles_hint.setWordWrap(True)
        self.ticket_articles_hint.setAccessibleName("Why knowledge articles are unavailable")
        self._add_field(
            form,
            ARTICLES_KEY,
            "Knowledge articles:",
            self.ticket_articles_check,
            self.ticket_articles_check.isChecked,
            extra=(self.ticket_articles_hint,),
        )
        return page

    def _ticket_edit(self, form: QFormLayout, key: str, text: str, placeholder: str) -> QLineEdit:
        page = form.parentWidget()
        assert page is not None
        edit = self._line_edit(page, self._settings.value(key), placeholder)
        # A new user setting up a ticket system needs the hint on sight, not only from a screen reader.
        edit.setToolTip(SETTINGS[key].help)
        self._add_field(form, key, text, edit, self._text(edit))
        return edit

    @staticmethod
    def _line_edit(parent: QWidget, value: Value, placeholder: str) -> QLineEdit:
        edit = QLineEdit(str(value), parent)
        edit.setPlaceholderText(placeholder)
        return edit

    @staticmethod
    def _text(edit: QLineEdit) -> Callable[[], object]:
        # Leading or trailing spaces in a name or URL are never meant, and would only fail the checks.
        return lambda: edit.text().strip()

    # ------------------------------------------------------------------------------------------
    # Devices
    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _list_devices() -> tuple[list[AudioDevice], str]:
        try:
            return list_devices(), ""
        except Exception as exc:  # PortAudio missing or failing: the rest of the dialog still works
            return [], f"Audio devices could not be listed ({exc or type(exc).__name__})."

    def _fill_devices(self, combo: QComboBox, direction: Direction, current: Value) -> None:
        combo.addItem(SYSTEM_DEFAULT_LABEL, "")
        names: list[str] = []
        for device in self._devices:
            if device.channels(direction) > 0 and device.name not in names:
                names.append(device.name)
        for name in names:
            combo.addItem(name, name)
        wanted = str(current)
        if not wanted:
            combo.setCurrentIndex(0)
            return
        if wanted not in names:
            try:
                wanted = match_device(self._devices, wanted, direction).name  # an index or a part of a name
            except DeviceError:
                combo.addItem(wanted + NOT_CONNECTED_SUFFIX, wanted)
        _select(combo, wanted)

    def _resolve(self, direction: Direction, value: str) -> AudioDevice | None:
        """The device a picker's value means now, or None when it is not connected."""
        usable = [d for d in self._devices if d.channels(direction) > 0]
        for device in usable:
            if value and device.name == value:
                return device  # the first of several same-named devices, as the picker shows one
        try:
            return match_device(self._devices, value or None, direction)
        except DeviceError:
            return None

    @Slot()
    def _refresh_probe(self) -> None:
        """Runs the level probe on the chosen input while the Audio page is on screen, else stops it."""
        wanted = self.isVisible() and self.tabs.currentWidget() is self.audio_page
        value = _data(self.input_combo)
        device = self._resolve("input", value) if wanted else None
        if wanted and self._probe is not None and self._probe.device == device:
            return
        self._stop_probe()
        if not wanted:
            return
        if device is None:
            shown = value or SYSTEM_DEFAULT_LABEL
            self.level_status.setText(f"{shown} is not connected" if value else "No microphone is available")
            self.level_status.setToolTip(shown)
            return
        probe = InputLevelProbe(device)
        try:
            probe.start()
        except DeviceError as exc:
            self.level_status.setText(f"Cannot listen: {exc}")
            return
        self._probe = probe
        self.level_status.setText(f"Listening to {device.name}")
        self._level_timer.start()

    def _stop_probe(self) -> None:
        self._level_timer.stop()
        if self._probe is not None:
            self._probe.stop()
            self._probe = None
        self.level_meter.set_level(FLOOR_DBFS)
        self.level_status.clear()

    @Slot()
    def _show_level(self) -> None:
        # Polled, not signalled: the probe's audio callback only stores a float on the probe, so the
        # PortAudio thread never reaches this dialog, which may be deleted while the stream runs.
        if self._probe is not None:
            self.level_meter.set_level(self._probe.level_dbfs)

    @property
    def probe(self) -> InputLevelProbe | None:
        """The running microphone probe, if any."""
        return self._probe

    @Slot()
    def stop_audio(self) -> None:
        """Closes the microphone probe; the dialog does this itself when it is hidden or closed."""
        self._stop_probe()

    @Slot()
    def play_test_sound(self) -> None:
        """Plays the test sound on the output device selected in the picker (saved or not)."""
        value = _data(self.output_combo)
        device = self._resolve("output", value)
        if device is None:
            text = f"{value} is not connected" if value else "No speaker is available"
            self.test_sound_status.setText(text)
            return
        try:
            # Returns at once; its closer thread holds only the stream, so it reports nothing here.
            play_test_sound(device)
        except DeviceError as exc:
            self.test_sound_status.setText(f"Cannot play: {exc}")
            return
        self.test_sound_status.setText(f"Playing the test sound on {device.name}")

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._refresh_probe()

    def hideEvent(self, event: QHideEvent) -> None:
        self._stop_probe()
        super().hideEvent(event)

    def closeEvent(self, event: QCloseEvent) -> None:
        self._stop_probe()
        super().closeEvent(event)

    # ------------------------------------------------------------------------------------------
    # Notes, enabling, the API key
    # ------------------------------------------------------------------------------------------
    def _show_origin(self, key: str, field: FieldRow) -> None:
        if key not in SETTINGS:
            return
        if self._settings.locked(key):
            tip = (
                f"Your organisation's policy ({self._settings.policy_of(key)}) sets this value; "
                "it cannot be changed here."
            )
            field.note.setText(LOCKED_NOTE)
            field.note.setToolTip(tip)
            field.widget.setToolTip(tip)
            field.widget.setAccessibleDescription(f"{LOCKED_NOTE}. {field.description}".strip())
            field.description = field.widget.accessibleDescription()
            field.note.show()
            return
        origin = self._settings.origin(key)
        if origin == "env":
            setting = SETTINGS[key]
            variable = next(
                (name for name in (setting.env, *setting.env_aliases) if name in self._environ), setting.env
            )
            field.note.setText(
                f"Overridden for this run by the environment variable {variable}; "
                "a value saved here applies once it is no longer set."
            )
        elif origin == "cli":
            field.note.setText(
                "Overridden for this run by a command-line option; a value saved here applies to later runs."
            )
        else:
            return
        field.note.setToolTip(field.note.text())
        field.note.show()

    def _current(self, key: str) -> object:
        """The value the dialog stands for: the policy's for a locked key, else what the field holds."""
        if self._settings.locked(key):
            return self._settings.value(key)
        return self._fields[key].read()

    def _applies(self, key: str) -> bool:
        """Whether ``key`` matters with the backend, turn detection and ticket system chosen now."""
        used_by = _USED_BY.get(key)
        if used_by is not None and self._current("backend") not in used_by:
            return False
        token_service = bool(str(self._current("endpoint.token_url") or "").strip())
        if key == API_KEY_FIELD and token_service:
            return False  # the token service gives the keys
        if key == "endpoint.token_auth" and not token_service:
            return False
        ticket_systems = TICKET_USED_BY.get(key)
        if ticket_systems is not None and self._current("tickets.system") not in ticket_systems:
            return False
        if key == ARTICLES_KEY and self._current("tickets.system") not in TICKET_SYSTEMS_WITH_ARTICLES:
            return False
        return not (key == "eagerness" and self._current("turn_detection") != "semantic_vad")

    def _editable(self, key: str) -> bool:
        return self._applies(key) and not (key in SETTINGS and self._settings.locked(key))

    @Slot()
    def _update_enabled(self) -> None:
        for key, field in self._fields.items():
            enabled = self._editable(key)
            field.widget.setEnabled(enabled)
            field.label.setEnabled(enabled)
        self._update_ticket_rows()

    def _ticket_system(self) -> str:
        return str(self._current("tickets.system"))

    def _update_ticket_rows(self) -> None:
        """Only the rows the chosen ticket system uses are shown, named as that system names them."""
        system = self._ticket_system()
        for key in TICKET_USED_BY:
            self._tickets_form.setRowVisible(self._fields[key].label, self._applies(key))
        self._rename(self._fields[TICKET_SECRET_FIELD], CREDENTIAL_LABELS.get(system, NO_CREDENTIAL_LABEL))
        self._rename(self._fields["tickets.user"], USER_LABELS.get(system, "API &user:"))
        self.test_connection_button.setEnabled(system != "none" and not self.connection_test.running)
        self._update_articles_hint(system)

    def _update_articles_hint(self, system: str) -> None:
        """Says why the articles box is off, on screen and to a screen reader, which cannot focus it."""
        field = self._fields[ARTICLES_KEY]
        hint = articles_hint(system)
        self.ticket_articles_hint.setText(hint)
        self.ticket_articles_hint.setVisible(bool(hint))
        # In the description _mark restores, so a later check of the fields does not drop the hint.
        field.description = ". ".join(part for part in (self._articles_description, hint) if part)
        field.widget.setAccessibleDescription(field.description)

    @staticmethod
    def _rename(field: FieldRow, text: str) -> None:
        field.label.setText(text)
        field.name = text.replace("&", "").rstrip(":")
        field.widget.setAccessibleName(field.name)
        field.error.setAccessibleName(f"{field.name} error")

    @Slot()
    def _ticket_system_changed(self) -> None:
        # A result for the system shown before would now mislabel this one.
        self.connection_test.cancel()
        self.connection_status.clear()
        self.test_connection_button.setText(TEST_CONNECTION_LABEL)
        self._update_enabled()
        self._update_ticket_secret_status()

    def _update_ticket_secret_status(self) -> None:
        """Says whether the chosen system has a credential, never the credential itself."""
        system = self._ticket_system()
        field = self._fields[TICKET_SECRET_FIELD]
        in_keyring = False
        problem = ""
        if system != "none":
            try:
                in_keyring = stored_ticket_secret(system)
            except ConnectorError as exc:
                problem = exc.message
        if system == "none":
            text = ""
        elif self._environ.get(SECRET_ENV, "").strip():
            text = f"{field.name}: set by {SECRET_ENV} for this run"
        elif problem:
            text = f"{field.name}: unknown ({problem})"
        else:
            text = f"{field.name}: {'stored in the system keyring' if in_keyring else 'none stored'}"
        self.ticket_secret_status.setText(text)
        self.ticket_secret_status.setToolTip(text)
        # Only a keyring entry can be removed here: the environment's is the caller's to unset.
        self.remove_credential_button.setEnabled(in_keyring and not self._tickets_locked())

    def _tickets_locked(self) -> bool:
        """Whether the site policy sets where tickets go (the system or a field it uses)."""
        return any(
            key in SETTINGS and self._settings.locked(key) and (key == "tickets.system" or self._applies(key))
            for key in DELIVERY_ONLY_KEYS
        )

    @Slot()
    def ask_remove_ticket_secret(self) -> None:
        """Asks before deleting the chosen system's credential (a box that does not block the app)."""
        system = self._ticket_system()
        if system == "none" or self._tickets_locked():
            return
        name = self._fields[TICKET_SECRET_FIELD].name
        box = QMessageBox(
            QMessageBox.Icon.Question,
            "Remove credential",
            f"Remove the {name.lower()} for {system_name(system)} from the system keyring?\n\n"
            "Tickets then stay on this computer until a new one is saved.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            self,
        )
        box.button(QMessageBox.StandardButton.Yes).setText("&Remove")  # says what Yes does
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)  # Enter must not delete it
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        remove = box.button(QMessageBox.StandardButton.Yes)
        # The system asked about, not the one shown when the answer comes.
        box.buttonClicked.connect(
            lambda button: self.remove_ticket_secret(system) if button is remove else None
        )
        box.destroyed.connect(self._remove_box_closed)
        self.remove_credential_box = box
        box.open()  # not exec(): a nested loop would hold up quitting from the tray

    @Slot()
    def _remove_box_closed(self) -> None:
        self.remove_credential_box = None

    def remove_ticket_secret(self, system: str) -> None:
        """Deletes ``system``'s credential from the keyring at once (Cancel does not bring it back);
        the app hears of it as a save, so its delivery stops using the credential now."""
        field = self._fields[TICKET_SECRET_FIELD]
        try:
            removed = delete_ticket_secret(system)
        except Exception as exc:  # keyring's errors (no backend, locked, refused): its message says which
            reason = str(exc) or type(exc).__name__
            self._mark(field, f"{field.name}: the system keyring could not remove it ({reason})")
            return
        self._mark(field, None)
        self._update_ticket_secret_status()
        if removed:
            self.last_saved = frozenset({TICKET_SECRET_FIELD})
            self.settings_saved.emit()

    def _typed_tickets(self) -> tuple[TicketSettings | None, dict[str, str]]:
        """The ticket settings as the fields hold them now, or the problems that keep them from use."""
        errors: dict[str, str] = {}
        values: dict[str, Value] = dict(self._settings.values)
        for key in self._fields:
            if not key.startswith("tickets.") or key not in SETTINGS or not self._applies(key):
                continue
            field = self._fields[key]
            try:
                value = validate_setting(key, self._current(key))
            except ConfigError as exc:
                errors[key] = self._human(field, str(exc))
                continue
            if key in TICKET_REQUIRED and not str(value).strip():
                errors[key] = f"{field.name}: {system_name(self._ticket_system())} needs it"
            values[key] = value
        if errors:
            return None, errors
        return typed_settings(values).tickets, {}

    @Slot()
    def test_connection(self) -> None:
        """Tries the ticket system with the fields as typed (not yet saved), in a worker thread."""
        if self.connection_test.running:
            return
        tickets, errors = self._typed_tickets()
        for key in TICKET_USED_BY:
            self._mark(self._fields[key], errors.get(key))
        if tickets is None:
            self.connection_status.setText("Not tested: please correct the fields marked.")
            return
        secret = self.ticket_secret_edit.text().strip() if self._editable(TICKET_SECRET_FIELD) else ""
        self.test_connection_button.setEnabled(False)
        self.test_connection_button.setText("Testing…")
        self.connection_status.setText(f"Connecting to {system_name(tickets.system)}…")
        self.connection_test.start(tickets, secret)

    @Slot(bool, str)
    def _connection_tested(self, ok: bool, message: str) -> None:
        self.test_connection_button.setText(TEST_CONNECTION_LABEL)
        self.test_connection_button.setEnabled(self._ticket_system() != "none")
        self.connection_status.setText(message if ok else f"⚠ {message}")
        self.connection_status.setToolTip(message)
        self.connection_status.setAccessibleDescription(message)

    def _update_key_status(self) -> None:
        status = secrets.status(self._environ)
        text = f"API key: {status.describe()}"
        if status.source == "env":
            text += f". The key in {API_KEY_ENV} is used for this run."
        self.key_status_label.setText(text)
        self.key_status_label.setToolTip(text)
        stored = secrets.status({k: v for k, v in self._environ.items() if k != API_KEY_ENV})
        self.remove_key_button.setEnabled(stored.source == "keyring")

    @Slot()
    def remove_api_key(self) -> None:
        """Deletes the stored API key from the keyring at once (Cancel does not bring it back)."""
        field = self._fields[API_KEY_FIELD]
        try:
            removed = secrets.delete_api_key()
        except SecretStoreError as exc:
            self._mark(field, f"{field.name}: {exc}")
            return
        self._mark(field, None)
        self._key_removed = self._key_removed or removed
        self._update_key_status()

    # ------------------------------------------------------------------------------------------
    # Checking and saving
    # ------------------------------------------------------------------------------------------
    def _human(self, field: FieldRow, message: str) -> str:
        """A config message ("endpoint.url must start with...") under the field's visible name."""
        if message.startswith(field.key + " "):
            message = message[len(field.key) + 1 :]
        return f"{field.name}: {message}"

    def _check(self) -> tuple[dict[str, Value], dict[str, str]]:
        """The checked values of the fields that would be saved, and a message per invalid field."""
        values: dict[str, Value] = {}
        errors: dict[str, str] = {}
        for key, field in self._fields.items():
            if key not in SETTINGS or not self._editable(key):
                continue
            try:
                values[key] = validate_setting(key, field.read())
            except ConfigError as exc:
                errors[key] = self._human(field, str(exc))
        # What the dialog stands for: the checked fields, and the policy's value for a locked key.
        current = {**values, **{key: self._settings.value(key) for key in self._settings.locks}}
        key_present = bool(self.api_key_edit.text().strip()) or secrets.status(self._environ).is_set
        for problem in cross_field_problems(current, api_key_present=key_present):
            # A field already marked invalid keeps that message: it says more than "needs".
            if problem.key in self._fields and problem.key not in errors:
                errors[problem.key] = f"{self._fields[problem.key].name}: {problem.message}"
        return values, errors

    def _mark(self, field: FieldRow, message: str | None) -> None:
        field.widget.setProperty("invalid", message is not None)
        _repolish(field.widget)
        if message is None:
            field.error.clear()
            field.error.hide()
            field.widget.setAccessibleDescription(field.description)
        else:
            field.error.setText(f"⚠ {message}")
            field.error.show()
            field.widget.setAccessibleDescription(f"Invalid. {message}")

    def _show_errors(self, errors: Mapping[str, str]) -> None:
        for key, field in self._fields.items():
            self._mark(field, errors.get(key))
        if not errors:
            self.message_label.clear()
            self.message_label.hide()
            return
        count = "1 setting" if len(errors) == 1 else f"{len(errors)} settings"
        ordered = [errors[key] for key in self._fields if key in errors]
        self.message_label.setText(
            f"Nothing was saved. Please correct {count}:\n" + "\n".join(f"• {text}" for text in ordered)
        )
        self.message_label.setAccessibleDescription(self.message_label.text())
        self.message_label.show()
        first = next(self._fields[key] for key in self._fields if key in errors)
        for index in range(self.tabs.count()):
            page = self.tabs.widget(index)
            if page is not None and page.isAncestorOf(first.widget):
                self.tabs.setCurrentIndex(index)
        if first.widget.isEnabled():
            first.widget.setFocus()

    def field(self, key: str) -> FieldRow:
        """The row of setting ``key`` (or of ``api_key``); raises KeyError for a key not shown here."""
        return self._fields[key]

    def fields(self) -> tuple[FieldRow, ...]:
        """Every row, in the order of the pages and the forms."""
        return tuple(self._fields.values())

    def errors(self) -> dict[str, str]:
        """The messages shown now, by setting key (``api_key`` for the key); empty when none."""
        return {
            key: field.error.text().removeprefix("⚠ ")
            for key, field in self._fields.items()
            if field.error.text()
        }

    def changed_values(self) -> dict[str, Value]:
        """What Save would write now: the checked values the user changed (invalid ones left out)."""
        values, _ = self._check()
        return {
            key: value
            for key, value in values.items()
            if self._fields[key].read() != self._fields[key].initial
        }

    def save(self) -> bool:
        """Checks every field and, when all pass, stores the key and writes the changed settings.

        Returns False, with the problems shown, when something is invalid or cannot be stored.
        """
        values, errors = self._check()
        self._show_errors(errors)
        if errors:
            return False
        changes = {
            key: value
            for key, value in values.items()
            if self._fields[key].read() != self._fields[key].initial
        }
        key_field = self._fields[API_KEY_FIELD]
        typed = self.api_key_edit.text().strip()
        if typed and self._editable(API_KEY_FIELD):
            try:
                secrets.store_api_key(typed)
            except SecretStoreError as exc:
                self._show_errors({API_KEY_FIELD: f"{key_field.name}: {exc}"})
                return False
            self.api_key_edit.clear()
            self._update_key_status()
        secret_field = self._fields[TICKET_SECRET_FIELD]
        typed_secret = self.ticket_secret_edit.text().strip()
        if typed_secret and self._editable(TICKET_SECRET_FIELD):
            try:
                store_ticket_secret(self._ticket_system(), typed_secret)
            except Exception as exc:  # keyring's errors (no backend, locked, refused): its message says which
                reason = str(exc) or type(exc).__name__
                message = f"{secret_field.name}: the system keyring could not store it ({reason})"
                self._show_errors({TICKET_SECRET_FIELD: message})
                return False
            self.ticket_secret_edit.clear()
            self._update_ticket_secret_status()
        saved: list[str] = []
        for key, value in changes.items():
            field = self._fields[key]
            try:
                save_user_setting(key, value, environ=self._environ)
            except ConfigError as exc:
                self._show_errors({key: self._human(field, str(exc))})
                if saved:
                    self.message_label.setText(
                        self.message_label.text()
                        + "\nAlready saved: "
                        + ", ".join(self._fields[done].name for done in saved)
                    )
                return False
            field.initial = field.read()
            saved.append(key)
        if changes or typed or typed_secret or self._key_removed:
            saved_keys = set(changes)
            if typed or self._key_removed:
                saved_keys.add(API_KEY_FIELD)
            if typed_secret:
                saved_keys.add(TICKET_SECRET_FIELD)
            self.last_saved = frozenset(saved_keys)
            self._key_removed = False
            self.settings_saved.emit()
        return True

    def accept(self) -> None:
        if self.save():
            super().accept()


def _status_and_remove_button(
    parent: QWidget, status_name: str, button_text: str, button_name: str
) -> tuple[QLabel, QPushButton, QWidget]:
    """A stored secret's status beside the button that removes it, as one row for a form field."""
    status = QLabel(parent)
    status.setWordWrap(True)
    status.setAccessibleName(status_name)
    button = QPushButton(button_text, parent)
    button.setAccessibleName(button_name)
    row_widget = QWidget(parent)
    row = QHBoxLayout(row_widget)
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(status, 1)
    row.addWidget(button)
    return status, button, row_widget
