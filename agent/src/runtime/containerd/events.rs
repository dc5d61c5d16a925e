//! containerd event topics and their decoding.

use containerd_client::{events as ev, types::Envelope};
use prost::Message as _;

use crate::state::containers::ContainerEvent;

/// Topics pidmap acts on, in one place.
pub(crate) mod topics {
    pub(crate) const TASK_START: &str = "/tasks/start";
    pub(crate) const TASK_EXEC_STARTED: &str = "/tasks/exec-started";
    pub(crate) const TASK_EXIT: &str = "/tasks/exit";
    pub(crate) const TASK_DELETE: &str = "/tasks/delete";
    pub(crate) const TASK_OOM: &str = "/tasks/oom";
    pub(crate) const TASK_PAUSED: &str = "/tasks/paused";
    pub(crate) const TASK_RESUMED: &str = "/tasks/resumed";
    pub(crate) const CONTAINER_CREATE: &str = "/containers/create";
    pub(crate) const CONTAINER_UPDATE: &str = "/containers/update";
    pub(crate) const CONTAINER_DELETE: &str = "/containers/delete";
    pub(crate) const NAMESPACE_CREATE: &str = "/namespaces/create";
    pub(crate) const NAMESPACE_DELETE: &str = "/namespaces/delete";
    /// pidmap's own marker, published to confirm a subscription is live.
    pub(crate) const SYNC: &str = "/pidmap/sync";

    /// The subscription filters: only the topics above.
    pub(crate) fn filters() -> Vec<String> {
        [
            TASK_START,
            TASK_EXEC_STARTED,
            TASK_EXIT,
            TASK_DELETE,
            TASK_OOM,
            TASK_PAUSED,
            TASK_RESUMED,
            CONTAINER_CREATE,
            CONTAINER_UPDATE,
            CONTAINER_DELETE,
            NAMESPACE_CREATE,
            NAMESPACE_DELETE,
            SYNC,
        ]
        .iter()
        .map(|t| format!("topic==\"{t}\""))
        .collect()
    }
}

/// An envelope pidmap could not decode.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EventError {
    /// The envelope carries no event payload.
    #[error("event {topic} has no payload")]
    Empty { topic: String },
    /// The payload is not the message its topic promises.
    #[error("event {topic} payload ({type_url}) does not decode")]
    Decode {
        topic: String,
        type_url: String,
        #[source]
        source: prost::DecodeError,
    },
}

/// Decodes an envelope; `Ok(None)` for topics pidmap ignores.
///
/// The payload is decoded by topic. containerd's `Any.type_url` lacks the
/// leading `/` prost expects, so it is only used in error messages.
pub(crate) fn decode(env: &Envelope) -> Result<Option<ContainerEvent>, EventError> {
    let any = env.event.as_ref().ok_or_else(|| EventError::Empty {
        topic: env.topic.clone(),
    })?;
    let namespace = env.namespace.clone();
    let bytes = any.value.as_slice();
    let fail = |source| EventError::Decode {
        topic: env.topic.clone(),
        type_url: any.type_url.clone(),
        source,
    };
    let event = match env.topic.as_str() {
        topics::TASK_START => {
            let e = ev::TaskStart::decode(bytes).map_err(fail)?;
            ContainerEvent::TaskStart {
                namespace,
                container_id: e.container_id,
                pid: e.pid,
            }
        }
        topics::TASK_EXEC_STARTED => {
            let e = ev::TaskExecStarted::decode(bytes).map_err(fail)?;
            ContainerEvent::ExecStarted {
                namespace,
                container_id: e.container_id,
                exec_id: e.exec_id,
                pid: e.pid,
            }
        }
        topics::TASK_EXIT => {
            let e = ev::TaskExit::decode(bytes).map_err(fail)?;
            ContainerEvent::TaskExit {
                namespace,
                container_id: e.container_id,
                exec_id: e.id,
                pid: e.pid,
                exit_status: e.exit_status,
                exited_at: e.exited_at.map(|t| t.seconds),
            }
        }
        topics::TASK_DELETE => {
            let e = ev::TaskDelete::decode(bytes).map_err(fail)?;
            ContainerEvent::TaskDelete {
                namespace,
                container_id: e.container_id,
                exit_status: e.exit_status,
                exited_at: e.exited_at.map(|t| t.seconds),
            }
        }
        topics::TASK_OOM => {
            let e = ev::TaskOom::decode(bytes).map_err(fail)?;
            ContainerEvent::TaskOom {
                namespace,
                container_id: e.container_id,
            }
        }
        topics::TASK_PAUSED | topics::TASK_RESUMED => {
            let e = ev::TaskPaused::decode(bytes).map_err(fail)?;
            ContainerEvent::TaskPaused {
                namespace,
                container_id: e.container_id,
                paused: env.topic == topics::TASK_PAUSED,
            }
        }
        topics::CONTAINER_CREATE => {
            let e = ev::ContainerCreate::decode(bytes).map_err(fail)?;
            ContainerEvent::ContainerChanged {
                namespace,
                container_id: e.id,
            }
        }
        topics::CONTAINER_UPDATE => {
            let e = ev::ContainerUpdate::decode(bytes).map_err(fail)?;
            ContainerEvent::ContainerChanged {
                namespace,
                container_id: e.id,
            }
        }
        topics::CONTAINER_DELETE => {
            let e = ev::ContainerDelete::decode(bytes).map_err(fail)?;
            ContainerEvent::ContainerDelete {
                namespace,
                container_id: e.id,
            }
        }
        topics::NAMESPACE_CREATE => {
            let e = ev::NamespaceCreate::decode(bytes).map_err(fail)?;
            ContainerEvent::NamespaceCreate { name: e.name }
        }
        topics::NAMESPACE_DELETE => {
            let e = ev::NamespaceDelete::decode(bytes).map_err(fail)?;
            ContainerEvent::NamespaceDelete { name: e.name }
        }
        _ => return Ok(None),
    };
    Ok(Some(event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Any;

    fn envelope(topic: &str, type_url: &str, value: Vec<u8>) -> Envelope {
        Envelope {
            timestamp: None,
            namespace: "k8s.io".into(),
            topic: topic.into(),
            event: Some(Any {
                type_url: type_url.into(),
                value,
            }),
        }
    }

    #[test]
    fn decodes_task_start_without_leading_slash_in_type_url() {
        let msg = ev::TaskStart {
            container_id: "c1".into(),
            pid: 4711,
        };
        let env = envelope(
            topics::TASK_START,
            "containerd.events.TaskStart",
            msg.encode_to_vec(),
        );
        assert_eq!(
            decode(&env).unwrap(),
            Some(ContainerEvent::TaskStart {
                namespace: "k8s.io".into(),
                container_id: "c1".into(),
                pid: 4711
            })
        );
    }

    #[test]
    fn decodes_exit_with_exec_id_and_time() {
        let msg = ev::TaskExit {
            container_id: "c1".into(),
            id: "exec-1".into(),
            pid: 99,
            exit_status: 3,
            exited_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
        };
        let env = envelope(
            topics::TASK_EXIT,
            "containerd.events.TaskExit",
            msg.encode_to_vec(),
        );
        let Some(ContainerEvent::TaskExit {
            exec_id,
            exit_status,
            exited_at,
            ..
        }) = decode(&env).unwrap()
        else {
            panic!("not an exit");
        };
        assert_eq!(exec_id, "exec-1");
        assert_eq!(exit_status, 3);
        assert_eq!(exited_at, Some(1_700_000_000));
    }

    #[test]
    fn ignores_other_topics_and_rejects_garbage() {
        let env = envelope("/snapshot/prepare", "x", vec![]);
        assert_eq!(decode(&env).unwrap(), None);
        let env = envelope(
            topics::TASK_START,
            "containerd.events.TaskStart",
            vec![0xff, 0xff],
        );
        assert!(matches!(decode(&env), Err(EventError::Decode { .. })));
        let mut env = envelope(topics::TASK_START, "x", vec![]);
        env.event = None;
        assert!(matches!(decode(&env), Err(EventError::Empty { .. })));
    }

    #[test]
    fn filters_cover_every_topic() {
        let f = topics::filters();
        assert_eq!(f.len(), 13);
        assert!(f.contains(&"topic==\"/tasks/exit\"".to_owned()));
    }
}
