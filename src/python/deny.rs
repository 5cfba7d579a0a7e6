//! `pyo3mq.Deny`: what an authenticator or authorizer returns to refuse with an MQTT 5.0
//! reason code of its choice and, optionally, a Reason String. A small frozen record
//! checked when it is made, read by the reply handle (bridge/records.rs) without any
//! decoding in Python.
//!
//! Whether the code suits the packet it goes in (CONNACK, PUBACK/PUBREC, SUBACK) is
//! checked by the connection (`Refusal::checked`, hooks/refusal.rs), which knows which
//! packet that is; a code outside that packet's table is logged and sent as 0x87.

use bytestring::ByteString;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::broker::hooks::Refusal;
use crate::codec::ReasonCode;

/// A refusal with a 5.0 reason code (0x80 or above) and an optional Reason String.
#[pyclass(
    frozen,
    eq,
    hash,
    get_all,
    skip_from_py_object,
    module = "pyo3mq._pyo3mq"
)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Deny {
    reason_code: u8,
    reason_string: Option<String>,
}

#[pymethods]
impl Deny {
    #[new]
    #[pyo3(signature = (reason_code = 0x87, reason_string = None))]
    fn new(reason_code: u8, reason_string: Option<&Bound<'_, PyAny>>) -> PyResult<Deny> {
        if reason_code < 0x80 {
            return Err(PyValueError::new_err(format!(
                "a refusal's reason_code is 0x80 or above (MQTT 5.0 2.4: codes below 0x80 \
                 report success), not {reason_code:#04x}"
            )));
        }
        let reason_string = match reason_string {
            Some(value) if !value.is_none() => {
                Some(super::properties::text("reason_string", value)?)
            }
            _ => None,
        };
        Ok(Deny {
            reason_code,
            reason_string,
        })
    }

    fn __repr__(&self) -> String {
        match &self.reason_string {
            Some(text) => format!(
                "Deny(reason_code={:#04x}, reason_string={text:?})",
                self.reason_code
            ),
            None => format!("Deny(reason_code={:#04x})", self.reason_code),
        }
    }
}

impl Deny {
    pub(crate) fn refusal(&self) -> Refusal {
        Refusal {
            code: ReasonCode(self.reason_code),
            reason: self.reason_string.as_deref().map(ByteString::from),
        }
    }
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Deny>()
}
