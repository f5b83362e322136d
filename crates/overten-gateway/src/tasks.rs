//! Async tasks: the records behind `GET /tasks/{task_id}` ([`Tasks`]), a task's run
//! ([`TaskRun`]) and its answers, on a [`TaskStore`] (memory, or the gateway's Redis).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use overten_errors::{ApiError, Code, ErrorCode, RetryAfter, TaskError, TaskFailure, TaskStatus};
use serde::Serialize;

use crate::gateway::RunPermit;
use crate::outage::Outage;
use crate::store::{PermitId, Renewal, StoreError, StoreFailure, TaskKey, TaskRecord, TaskStore};

/// A response of this module: `202` for an accepted task, `200` with a task's body, or an
/// error envelope. axum serves it as it is.
pub type TaskResponse = Response<Full<Bytes>>;

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The longest task id `GET /tasks/{task_id}` looks up; longer ones are a 404 at once.
pub const MAX_TASK_ID_BYTES: usize = 128;

/// What a reader writes into a task whose replica stopped renewing it.
pub const REAPED_MESSAGE: &str =
    "The task stopped before it finished (its server went away); submit the work again";
/// What a task dropped by its handler unfinished reads as.
pub const ABANDONED_MESSAGE: &str = "The task ended without a result; submit the work again";

/// Async tasks for `GET /tasks/{task_id}`, on a [`TaskStore`]: [`MemoryTaskStore`] for one
/// replica, or the gateway's `RedisStore` (feature `redis`: the same connection, timeout
/// and failure policy as the counts, permits and idempotency records).
///
/// A task belongs to the org that made it (its record is keyed by org and id: another
/// org's `GET` is a 404). It moves `queued` → `running` → `succeeded` or `failed`, and
/// never out of a final state ([`TaskStatus::may_become`]). While it runs, its [`TaskRun`]
/// holds the run's [`RunPermit`] and, in a shared store, renews the task's lease
/// ([`Tasks::lease`]); a task whose lease ran out (its replica died) is marked `failed`
/// with `internal_error` by the first replica that reads it, so no task stays `running`
/// for ever. Finished tasks are kept for [`Tasks::retention`].
///
/// ```
/// use std::sync::Arc;
/// use overten_gateway::{MemoryTaskStore, Tasks};
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let tasks = Tasks::new(Arc::new(MemoryTaskStore::new()));
/// let run = tasks.create("org_1", None).await.unwrap();
/// let id = run.id().to_owned();
/// assert_eq!(run.accepted().status(), 202);
/// run.succeed(&serde_json::json!({"file": "q3.xlsx"}), 3).await.unwrap();
/// let body = tasks.read("org_1", &id).await.unwrap().unwrap();
/// assert!(std::str::from_utf8(&body).unwrap().contains(r#""status":"succeeded""#));
/// assert_eq!(tasks.read("org_2", &id).await.unwrap(), None, "another org's task");
/// # });
/// ```
///
/// [`MemoryTaskStore`]: crate::MemoryTaskStore
#[derive(Clone)]
pub struct Tasks {
    config: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    store: Arc<dyn TaskStore>,
    lease: Duration,
    retention: Duration,
    max_result_bytes: usize,
    retry_after: Duration,
    clock: Clock,
    outage: Arc<Outage>,
}

impl fmt::Debug for Tasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tasks")
            .field("lease", &self.config.lease)
            .field("retention", &self.config.retention)
            .field("max_result_bytes", &self.config.max_result_bytes)
            .field("retry_after", &self.config.retry_after)
            .finish_non_exhaustive()
    }
}

/// Why a task could not be finished as asked ([`TaskRun::succeed`]).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    /// The store failed; the task's lease runs out and a reader marks it failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The result is larger than [`Tasks::max_result_bytes`]: the task was marked failed.
    #[error("the task's result is {bytes} bytes, over the {max} kept")]
    TooLarge {
        /// The result's size as JSON.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The result could not be written as JSON: the task was marked failed.
    #[error("the task's result is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
}

/// What a task's work ends with, for `Tasks::spawn` (feature `tokio`): its result (the body the sync
/// request would have answered) and the credits it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<T> {
    /// The result.
    pub result: T,
    /// Credits charged.
    pub credits_used: u64,
}

impl<T> Outcome<T> {
    /// A result that used no credits.
    pub fn new(result: T) -> Outcome<T> {
        Outcome {
            result,
            credits_used: 0,
        }
    }

    /// The credits it used.
    #[must_use]
    pub fn credits_used(mut self, credits: u64) -> Outcome<T> {
        self.credits_used = credits;
        self
    }
}

#[derive(Serialize)]
struct Pending<'a> {
    task_id: &'a str,
    status: TaskStatus,
}

#[derive(Serialize)]
struct Accepted<'a> {
    success: bool,
    task_id: &'a str,
    status: TaskStatus,
}

#[derive(Serialize)]
struct Succeeded<'a, T: ?Sized> {
    task_id: &'a str,
    status: TaskStatus,
    result: &'a T,
    credits_used: u64,
    duration_ms: u64,
}

fn json_response(status: StatusCode, body: Bytes) -> TaskResponse {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(err: ApiError) -> TaskResponse {
    overten_errors_http::server::answer(err, |body| Full::new(Bytes::from(body)))
}

/// Whether `id` can be a task id: 1 to [`MAX_TASK_ID_BYTES`] visible ASCII characters.
fn plausible_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_TASK_ID_BYTES && id.bytes().all(|b| b.is_ascii_graphic())
}

impl Tasks {
    /// The default lease of a running task in a shared store: 30 s (renewed every 10 s
    /// while its [`TaskRun`] lives).
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
    /// The default time a task is kept: 24 hours after its last change.
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
    /// The default largest result kept: 1 MiB of JSON.
    pub const DEFAULT_MAX_RESULT_BYTES: usize = 1024 * 1024;

    /// Tasks on `store` with the defaults.
    pub fn new(store: Arc<dyn TaskStore>) -> Tasks {
        Tasks {
            config: Arc::new(Config {
                store,
                lease: Self::DEFAULT_LEASE,
                retention: Self::DEFAULT_RETENTION,
                max_result_bytes: Self::DEFAULT_MAX_RESULT_BYTES,
                retry_after: StoreFailure::DEFAULT_RETRY_AFTER,
                clock: Arc::new(SystemTime::now),
                outage: Arc::new(Outage::new("tasks")),
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Tasks {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// A running task's lease in a shared store: how long after its replica dies it is
    /// marked failed (default 30 s). Live tasks renew it; it bounds no task.
    #[must_use]
    pub fn lease(self, lease: Duration) -> Tasks {
        self.edit(|c| c.lease = lease.max(Duration::from_millis(1)))
    }

    /// How long a task is kept after its last change (default 24 h); then its `GET` is a
    /// 404.
    #[must_use]
    pub fn retention(self, retention: Duration) -> Tasks {
        self.edit(|c| c.retention = retention.max(Duration::from_millis(1)))
    }

    /// The largest result kept, as JSON (default 1 MiB).
    #[must_use]
    pub fn max_result_bytes(self, max: usize) -> Tasks {
        self.edit(|c| c.max_result_bytes = max)
    }

    /// The `Retry-After` of the 503 answered when the store fails: the gateway's
    /// [`StoreFailure::retry_after`] (a task cannot be made nor read without its store,
    /// whatever the policy).
    #[must_use]
    pub fn on_store_error(self, policy: StoreFailure) -> Tasks {
        self.edit(|c| c.retry_after = policy.retry_after())
    }

    /// Reads "now" from `clock` (leases and durations; tests pass one they own).
    #[must_use]
    pub fn with_clock(self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Tasks {
        self.edit(|c| c.clock = Arc::new(clock))
    }

    fn now_ms(&self) -> u64 {
        unix_ms((self.config.clock)())
    }

    fn lease_until(&self, now_ms: u64) -> u64 {
        if self.config.store.leases() {
            now_ms.saturating_add(u64::try_from(self.config.lease.as_millis()).unwrap_or(u64::MAX))
        } else {
            u64::MAX
        }
    }

    /// How long an unfinished task is kept: its lease and the retention (a task nobody
    /// reads after its replica died still goes away).
    fn open_ttl(&self) -> Duration {
        self.config.lease.saturating_add(self.config.retention)
    }

    fn observe<T>(
        &self,
        operation: &'static str,
        result: &Result<T, StoreError>,
        t: crate::metrics::Timer,
    ) {
        crate::metrics::store_call("tasks", operation, result.as_ref().err(), t.seconds());
        let now = std::time::Instant::now();
        let _reported = match result {
            Ok(_) => self.config.outage.succeeded(now),
            Err(err) => self.config.outage.failed(err, now),
        };
    }

    /// The 503 a store failure is answered with.
    fn unavailable(&self) -> TaskResponse {
        let secs = self.config.retry_after.as_secs().max(1);
        error_response(
            ApiError::new(
                ErrorCode::ServiceUnavailable,
                "Tasks cannot be reached right now; retry after the Retry-After delay",
            )
            .with_retry_after(RetryAfter::Seconds(secs)),
        )
    }

    fn failed_record(
        &self,
        task_id: &str,
        created_ms: u64,
        code: Code,
        message: &str,
        credits_used: u64,
    ) -> TaskRecord {
        let now = self.now_ms();
        let failure = TaskFailure {
            task_id: task_id.to_owned(),
            status: overten_errors::Failed,
            error: TaskError {
                code,
                message: message.to_owned(),
            },
            credits_used,
            duration_ms: now.saturating_sub(created_ms),
        };
        let view = serde_json::to_vec(&failure).unwrap_or_default();
        TaskRecord::new(TaskStatus::Failed, now, created_ms, Bytes::from(view))
    }

    /// Creates a `queued` task for `org`, holding `permit` (the run's, from the request's
    /// extensions) until the task ends. Send [`TaskRun::accepted`] to the client, then run
    /// the work and end with [`TaskRun::succeed`] or [`TaskRun::fail`]; a [`TaskRun`]
    /// dropped unfinished marks its task failed.
    pub async fn create(
        &self,
        org: &str,
        permit: Option<RunPermit>,
    ) -> Result<TaskRun, StoreError> {
        let id = format!("task_{}", PermitId::new().hex());
        let key = TaskKey::new(org, &id);
        let now = self.now_ms();
        let view = serde_json::to_vec(&Pending {
            task_id: &id,
            status: TaskStatus::Queued,
        })
        .unwrap_or_default();
        let record = TaskRecord::new(
            TaskStatus::Queued,
            self.lease_until(now),
            now,
            Bytes::from(view),
        );
        let t = crate::metrics::Timer::start();
        let created = self
            .config
            .store
            .create_task(&key, &record, self.open_ttl())
            .await;
        self.observe("create", &created, t);
        created?;
        crate::metrics::task("created");
        let renewal = self
            .config
            .store
            .keep_task_renewed(&key, self.config.lease, self.open_ttl());
        tracing::debug!(task_id = %id, "task created");
        Ok(TaskRun {
            tasks: self.clone(),
            key,
            id,
            created_ms: now,
            status: TaskStatus::Queued,
            renewal,
            permit,
        })
    }

    /// The body of `org`'s task `task_id` as `GET /tasks/{task_id}` answers it, or `None`
    /// (no such task, another org's, expired, or not an id). A task still `queued` or
    /// `running` whose lease ran out is marked `failed` (`internal_error`,
    /// [`REAPED_MESSAGE`]) here, atomically: one reader does it, the others read it.
    pub async fn read(&self, org: &str, task_id: &str) -> Result<Option<Bytes>, StoreError> {
        if !plausible_id(task_id) {
            return Ok(None);
        }
        let key = TaskKey::new(org, task_id);
        let t = crate::metrics::Timer::start();
        let read = self.config.store.read_task(&key).await;
        self.observe("read", &read, t);
        let Some(record) = read? else {
            return Ok(None);
        };
        let now = self.now_ms();
        if record.status.is_final() || record.lease_until_ms >= now {
            return Ok(Some(record.view));
        }
        let failed = self.failed_record(
            task_id,
            record.created_ms,
            Code::Known(ErrorCode::InternalError),
            REAPED_MESSAGE,
            0,
        );
        let t = crate::metrics::Timer::start();
        let reaped = self
            .config
            .store
            .reap_task(&key, &failed, now, self.config.retention)
            .await;
        self.observe("reap", &reaped, t);
        if reaped? {
            crate::metrics::task("reaped");
            tracing::warn!(
                task_id,
                lease_ended_ms_ago = now.saturating_sub(record.lease_until_ms),
                "task marked failed: its replica stopped renewing it"
            );
            return Ok(Some(failed.view));
        }
        // Another reader reaped it, or its owner renewed or finished it meanwhile.
        let t = crate::metrics::Timer::start();
        let again = self.config.store.read_task(&key).await;
        self.observe("read", &again, t);
        Ok(again?.map(|r| r.view))
    }

    /// `GET /tasks/{task_id}` for `org`: 200 with the task's body, 404 `not_found` (no
    /// such task for this org), or 503 `service_unavailable` with `Retry-After` when the
    /// store fails.
    pub async fn answer(&self, org: &str, task_id: &str) -> TaskResponse {
        match self.read(org, task_id).await {
            Ok(Some(view)) => json_response(StatusCode::OK, view),
            Ok(None) => error_response(ApiError::new(
                ErrorCode::NotFound,
                "No task with this id exists for your org",
            )),
            Err(_) => self.unavailable(),
        }
    }

    /// Creates a task for `org` holding `permit`, runs `work` on the tokio runtime
    /// (`running` when it starts), records what it ends with, and answers `202` with the
    /// task's id (503 when the store fails; then `work` is not run). A `work` that
    /// returns `Err` ends the task `failed` with that error's code and message; one that
    /// panics, `failed` with `internal_error`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use overten_gateway::{MemoryTaskStore, Outcome, Tasks};
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let tasks = Tasks::new(Arc::new(MemoryTaskStore::new()));
    /// let accepted = tasks
    ///     .spawn("org_1", None, async { Ok(Outcome::new(serde_json::json!({"file": "q3.xlsx"})).credits_used(2)) })
    ///     .await;
    /// assert_eq!(accepted.status(), 202);
    /// # });
    /// ```
    #[cfg(feature = "tokio")]
    pub async fn spawn<T, W>(&self, org: &str, permit: Option<RunPermit>, work: W) -> TaskResponse
    where
        T: Serialize + Send + Sync + 'static,
        W: std::future::Future<Output = Result<Outcome<T>, ApiError>> + Send + 'static,
    {
        let Ok(mut run) = self.create(org, permit).await else {
            return self.unavailable();
        };
        let accepted = run.accepted();
        tokio::spawn(async move {
            if let Err(error) = run.start().await {
                tracing::debug!(%error, "task not marked running");
            }
            let ended = match work.await {
                Ok(outcome) => run.succeed(&outcome.result, outcome.credits_used).await,
                Err(error) => run.fail(&error, 0).await.map_err(FinishError::Store),
            };
            if let Err(error) = ended {
                tracing::warn!(%error, "task end not recorded");
            }
        });
        accepted
    }

    /// A router with `GET /tasks/{task_id}` ([`Tasks::answer`] for the caller's org, from
    /// the gateway's [`Account`](crate::Account) in the request's extensions: put it
    /// behind the gateway's stack; without one the route answers 500 and logs why).
    #[cfg(feature = "axum")]
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        use axum::extract::{Path, Request};
        let tasks = self.clone();
        axum::Router::new().route(
            "/tasks/{task_id}",
            axum::routing::get(move |Path(task_id): Path<String>, request: Request| {
                let tasks = tasks.clone();
                async move {
                    let Some(account) = request.extensions().get::<crate::Account>() else {
                        tracing::error!("GET /tasks/{{id}} without the gateway's Account: put the tasks router behind the gateway");
                        return error_response(ApiError::from(ErrorCode::InternalError));
                    };
                    tasks.answer(&account.org_id, &task_id).await
                }
            }),
        )
    }
}

/// A task being run: made by [`Tasks::create`], ended by [`TaskRun::succeed`] or
/// [`TaskRun::fail`]. It holds the run's [`RunPermit`] (the permit goes back when the task
/// ends) and, in a shared store, keeps the task's lease renewed. Dropped unfinished (the
/// work panicked, or was cancelled), it marks the task `failed` with `internal_error`.
pub struct TaskRun {
    tasks: Tasks,
    key: TaskKey,
    id: String,
    created_ms: u64,
    status: TaskStatus,
    renewal: Option<Renewal>,
    permit: Option<RunPermit>,
}

impl fmt::Debug for TaskRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskRun")
            .field("id", &self.id)
            .field("status", &self.status)
            .field("permit", &self.permit)
            .finish_non_exhaustive()
    }
}

impl TaskRun {
    /// The task's id (`task_` and 32 hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its state, as this run last wrote it.
    pub fn status(&self) -> TaskStatus {
        self.status
    }

    /// The `202` for the request that made it: `{"success": true, "task_id": "…",
    /// "status": "queued"}`.
    pub fn accepted(&self) -> TaskResponse {
        let body = serde_json::to_vec(&Accepted {
            success: true,
            task_id: &self.id,
            status: TaskStatus::Queued,
        })
        .unwrap_or_default();
        json_response(StatusCode::ACCEPTED, Bytes::from(body))
    }

    async fn write(
        &mut self,
        record: TaskRecord,
        ttl: Duration,
        operation: &'static str,
    ) -> Result<bool, StoreError> {
        let status = record.status;
        let t = crate::metrics::Timer::start();
        let written = self
            .tasks
            .config
            .store
            .update_task(&self.key, &record, ttl)
            .await;
        self.tasks.observe(operation, &written, t);
        let written = written?;
        if written {
            self.status = status;
        } else {
            // Reaped (its lease ran out while the store was away): it is final now.
            self.status = TaskStatus::Failed;
        }
        Ok(written)
    }

    /// `queued` → `running`. `Ok(false)`: the task was already final (reaped).
    pub async fn start(&mut self) -> Result<bool, StoreError> {
        if !self.status.may_become(TaskStatus::Running) {
            return Ok(false);
        }
        let now = self.tasks.now_ms();
        let view = serde_json::to_vec(&Pending {
            task_id: &self.id,
            status: TaskStatus::Running,
        })
        .unwrap_or_default();
        let record = TaskRecord::new(
            TaskStatus::Running,
            self.tasks.lease_until(now),
            self.created_ms,
            Bytes::from(view),
        );
        let ttl = self.tasks.open_ttl();
        self.write(record, ttl, "start").await
    }

    /// Ends the task `succeeded` with `result` (what the sync request would have answered)
    /// and the credits it used. `Ok(false)`: the task was already final (reaped while the
    /// store was away), nothing changed. A result over [`Tasks::max_result_bytes`], or one
    /// that is not JSON, ends the task `failed` (`internal_error`) and is an error here.
    pub async fn succeed<T: Serialize + ?Sized>(
        mut self,
        result: &T,
        credits_used: u64,
    ) -> Result<bool, FinishError> {
        let now = self.tasks.now_ms();
        let body = serde_json::to_vec(&Succeeded {
            task_id: &self.id,
            status: TaskStatus::Succeeded,
            result,
            credits_used,
            duration_ms: now.saturating_sub(self.created_ms),
        });
        let max = self.tasks.config.max_result_bytes;
        let problem = match body {
            Ok(body) if body.len() <= max.saturating_add(256) => {
                let record = TaskRecord::new(
                    TaskStatus::Succeeded,
                    now,
                    self.created_ms,
                    Bytes::from(body),
                );
                let retention = self.tasks.config.retention;
                let done = self.write(record, retention, "succeed").await;
                self.status = TaskStatus::Succeeded;
                crate::metrics::task("succeeded");
                return Ok(done?);
            }
            Ok(body) => FinishError::TooLarge {
                bytes: body.len(),
                max,
            },
            Err(e) => FinishError::NotJson(e),
        };
        let message = match problem {
            FinishError::TooLarge { .. } => "The task's result is larger than the API keeps",
            _ => "The task's result could not be written",
        };
        tracing::warn!(task_id = %self.id, error = %problem, "task failed: its result cannot be kept");
        let record = self.tasks.failed_record(
            &self.id,
            self.created_ms,
            Code::Known(ErrorCode::InternalError),
            message,
            credits_used,
        );
        let retention = self.tasks.config.retention;
        self.write(record, retention, "fail").await?;
        self.status = TaskStatus::Failed;
        crate::metrics::task("failed");
        Err(problem)
    }

    /// Ends the task `failed` with `error`'s code and message (the public message: what a
    /// client may show). `Ok(false)`: already final.
    pub async fn fail(mut self, error: &ApiError, credits_used: u64) -> Result<bool, StoreError> {
        let record = self.tasks.failed_record(
            &self.id,
            self.created_ms,
            error.code().clone(),
            error.message(),
            credits_used,
        );
        let retention = self.tasks.config.retention;
        let done = self.write(record, retention, "fail").await;
        self.status = TaskStatus::Failed;
        crate::metrics::task("failed");
        done
    }
}

impl Drop for TaskRun {
    fn drop(&mut self) {
        // Renewals stop first, so that none lands after the end.
        drop(self.renewal.take());
        if !self.status.is_final() {
            crate::metrics::task("abandoned");
            tracing::warn!(task_id = %self.id, "task dropped unfinished: marked failed");
            let record = self.tasks.failed_record(
                &self.id,
                self.created_ms,
                Code::Known(ErrorCode::InternalError),
                ABANDONED_MESSAGE,
                0,
            );
            self.tasks
                .config
                .store
                .abandon_task(&self.key, record, self.tasks.config.retention);
        }
        // The permit goes back with `self.permit`, after this.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_on;
    use crate::store::MemoryTaskStore;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The memory store with leases, as a shared store has them.
    struct Leased(MemoryTaskStore);

    impl TaskStore for Leased {
        fn create_task<'a>(
            &'a self,
            key: &'a TaskKey,
            record: &'a TaskRecord,
            ttl: Duration,
        ) -> crate::BoxFuture<'a, Result<(), StoreError>> {
            self.0.create_task(key, record, ttl)
        }
        fn update_task<'a>(
            &'a self,
            key: &'a TaskKey,
            record: &'a TaskRecord,
            ttl: Duration,
        ) -> crate::BoxFuture<'a, Result<bool, StoreError>> {
            self.0.update_task(key, record, ttl)
        }
        fn renew_task<'a>(
            &'a self,
            key: &'a TaskKey,
            lease_until_ms: u64,
            ttl: Duration,
        ) -> crate::BoxFuture<'a, Result<bool, StoreError>> {
            self.0.renew_task(key, lease_until_ms, ttl)
        }
        fn reap_task<'a>(
            &'a self,
            key: &'a TaskKey,
            record: &'a TaskRecord,
            now_ms: u64,
            ttl: Duration,
        ) -> crate::BoxFuture<'a, Result<bool, StoreError>> {
            self.0.reap_task(key, record, now_ms, ttl)
        }
        fn read_task<'a>(
            &'a self,
            key: &'a TaskKey,
        ) -> crate::BoxFuture<'a, Result<Option<TaskRecord>, StoreError>> {
            self.0.read_task(key)
        }
        fn abandon_task(&self, key: &TaskKey, record: TaskRecord, ttl: Duration) {
            self.0.abandon_task(key, record, ttl);
        }
        fn leases(&self) -> bool {
            true
        }
    }

    fn clocked(store: Arc<dyn TaskStore>) -> (Tasks, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(1_700_000_000_000));
        let n = Arc::clone(&now);
        let tasks = Tasks::new(store)
            .lease(Duration::from_secs(10))
            .with_clock(move || {
                SystemTime::UNIX_EPOCH + Duration::from_millis(n.load(Ordering::SeqCst))
            });
        (tasks, now)
    }

    fn json(bytes: &Bytes) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn a_task_reads_queued_running_then_its_result_and_only_for_its_org() {
        let (tasks, now) = clocked(Arc::new(MemoryTaskStore::new()));
        let mut run = block_on(tasks.create("org_a", None)).unwrap();
        let id = run.id().to_owned();
        assert!(id.starts_with("task_") && id.len() == 37, "{id}");
        let accepted = run.accepted();
        assert_eq!(accepted.status(), StatusCode::ACCEPTED);
        let read = |org: &str| block_on(tasks.read(org, &id)).unwrap().map(|b| json(&b));
        assert_eq!(
            read("org_a").unwrap(),
            serde_json::json!({"task_id": id, "status": "queued"})
        );
        assert!(block_on(run.start()).unwrap());
        assert_eq!(read("org_a").unwrap()["status"], "running");
        assert_eq!(
            read("org_b"),
            None,
            "another org's task does not exist for it"
        );
        now.fetch_add(61_000, Ordering::SeqCst);
        // The memory store keeps no lease: a long task is not reaped.
        assert_eq!(read("org_a").unwrap()["status"], "running");
        assert!(block_on(run.succeed(&serde_json::json!({"file": "q3.xlsx"}), 4)).unwrap());
        assert_eq!(
            read("org_a").unwrap(),
            serde_json::json!({"task_id": id, "status": "succeeded", "result": {"file": "q3.xlsx"}, "credits_used": 4, "duration_ms": 61_000})
        );
        for bad in ["", "task_\u{0}", &"t".repeat(129)] {
            assert_eq!(block_on(tasks.read("org_a", bad)).unwrap(), None);
        }
    }

    #[test]
    fn a_failed_task_reads_as_the_pages_failure_object() {
        let (tasks, now) = clocked(Arc::new(MemoryTaskStore::new()));
        let run = block_on(tasks.create("org_a", None)).unwrap();
        let id = run.id().to_owned();
        now.fetch_add(45_123, Ordering::SeqCst);
        let err = ApiError::new(ErrorCode::UpstreamError, "The model provider is down");
        assert!(block_on(run.fail(&err, 2)).unwrap());
        let body = block_on(tasks.read("org_a", &id)).unwrap().unwrap();
        let failure = TaskFailure::parse(&body).unwrap();
        assert_eq!(failure.task_id, id);
        assert_eq!(failure.error.code, Code::Known(ErrorCode::UpstreamError));
        assert_eq!(failure.error.message, "The model provider is down");
        assert_eq!((failure.credits_used, failure.duration_ms), (2, 45_123));
    }

    #[test]
    fn a_task_whose_lease_ran_out_is_failed_by_its_first_reader_and_stays_failed() {
        let store = Arc::new(Leased(MemoryTaskStore::new()));
        let (tasks, now) = clocked(store);
        let mut run = block_on(tasks.create("org_a", None)).unwrap();
        let id = run.id().to_owned();
        assert!(block_on(run.start()).unwrap());
        now.fetch_add(10_000, Ordering::SeqCst);
        let status = |tasks: &Tasks| {
            json(&block_on(tasks.read("org_a", &id)).unwrap().unwrap())["status"].clone()
        };
        assert_eq!(
            status(&tasks),
            "running",
            "at the lease's last ms it still runs"
        );
        now.fetch_add(1, Ordering::SeqCst);
        let body = block_on(tasks.read("org_a", &id)).unwrap().unwrap();
        let failure = TaskFailure::parse(&body).unwrap();
        assert_eq!(failure.error.code, Code::Known(ErrorCode::InternalError));
        assert_eq!(failure.error.message, REAPED_MESSAGE);
        assert_eq!(failure.duration_ms, 10_001);
        // The owner comes back: it cannot finish a reaped task.
        assert!(!block_on(run.succeed(&1, 0)).unwrap());
        assert_eq!(status(&tasks), "failed");
    }

    #[test]
    fn a_task_dropped_unfinished_reads_failed_and_gives_its_permit_back() {
        use crate::key::KeyHash;
        use crate::store::{Admit, MemoryStore, RunAsk, Store};
        let permits = Arc::new(MemoryStore::new());
        let key = KeyHash::of("sk_live_k");
        let id = PermitId::new();
        let ask = Admit::new(&key, 1, 60, 10).with_run(RunAsk::new(id, 2, Duration::from_secs(30)));
        block_on(permits.admit(ask)).unwrap();
        let permit = RunPermit::new(permits.clone(), key, id, Duration::from_secs(30), None);
        let (tasks, _) = clocked(Arc::new(MemoryTaskStore::new()));
        let run = block_on(tasks.create("org_a", Some(permit))).unwrap();
        let task_id = run.id().to_owned();
        assert_eq!(permits.runs(&key), 1, "the task holds the run's permit");
        drop(run);
        assert_eq!(permits.runs(&key), 0, "and gives it back when it ends");
        let failure =
            TaskFailure::parse(&block_on(tasks.read("org_a", &task_id)).unwrap().unwrap()).unwrap();
        assert_eq!(failure.error.message, ABANDONED_MESSAGE);
    }

    #[test]
    fn a_result_too_large_to_keep_fails_the_task() {
        let (tasks, _) = clocked(Arc::new(MemoryTaskStore::new()));
        let tasks = tasks.max_result_bytes(10);
        let run = block_on(tasks.create("org_a", None)).unwrap();
        let id = run.id().to_owned();
        let big = "x".repeat(400);
        assert!(matches!(
            block_on(run.succeed(&big, 1)),
            Err(FinishError::TooLarge { max: 10, .. })
        ));
        let failure =
            TaskFailure::parse(&block_on(tasks.read("org_a", &id)).unwrap().unwrap()).unwrap();
        assert_eq!(failure.error.code, Code::Known(ErrorCode::InternalError));
        assert_eq!(
            failure.error.message,
            "The task's result is larger than the API keeps"
        );
        assert_eq!(failure.credits_used, 1);
        // Just within: kept.
        let run = block_on(tasks.create("org_a", None)).unwrap();
        assert!(block_on(run.succeed("0123456789", 0)).unwrap());
    }

    #[test]
    fn answers_are_200_404_and_503() {
        let (tasks, _) = clocked(Arc::new(MemoryTaskStore::new()));
        let run = block_on(tasks.create("org_a", None)).unwrap();
        let id = run.id().to_owned();
        assert_eq!(
            block_on(tasks.answer("org_a", &id)).status(),
            StatusCode::OK
        );
        let missing = block_on(tasks.answer("org_b", &id));
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            missing
                .extensions()
                .get::<ApiError>()
                .map(|e| e.code().as_str()),
            Some("not_found")
        );
        let down = tasks
            .on_store_error(StoreFailure::Reject {
                retry_after: Duration::from_secs(7),
            })
            .unavailable();
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.headers()[header::RETRY_AFTER], "7");
        drop(run);
    }

    /// A store that fails every call, counting them.
    #[derive(Default)]
    struct Broken(std::sync::atomic::AtomicU64);

    impl Broken {
        fn fail<'a, T: Send + 'a>(&'a self) -> crate::BoxFuture<'a, Result<T, StoreError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(std::future::ready(Err(StoreError::Timeout(
                Duration::from_millis(250),
            ))))
        }
    }

    impl TaskStore for Broken {
        fn create_task<'a>(
            &'a self,
            _: &'a TaskKey,
            _: &'a TaskRecord,
            _: Duration,
        ) -> crate::BoxFuture<'a, Result<(), StoreError>> {
            self.fail()
        }
        fn update_task<'a>(
            &'a self,
            _: &'a TaskKey,
            _: &'a TaskRecord,
            _: Duration,
        ) -> crate::BoxFuture<'a, Result<bool, StoreError>> {
            self.fail()
        }
        fn renew_task<'a>(
            &'a self,
            _: &'a TaskKey,
            _: u64,
            _: Duration,
        ) -> crate::BoxFuture<'a, Result<bool, StoreError>> {
            self.fail()
        }
        fn reap_task<'a>(
            &'a self,
            _: &'a TaskKey,
            _: &'a TaskRecord,
            _: u64,
            _: Duration,
        ) -> crate::BoxFuture<'a, Result<bool, StoreError>> {
            self.fail()
        }
        fn read_task<'a>(
            &'a self,
            _: &'a TaskKey,
        ) -> crate::BoxFuture<'a, Result<Option<TaskRecord>, StoreError>> {
            self.fail()
        }
        fn abandon_task(&self, _: &TaskKey, _: TaskRecord, _: Duration) {}
    }

    #[test]
    fn a_failing_store_is_a_503_an_outage_and_ids_that_cannot_be_are_not_looked_up() {
        let broken = Arc::new(Broken::default());
        let tasks = Tasks::new(broken.clone());
        assert!(!tasks.config.outage.is_down());
        let answer = block_on(tasks.answer("org_a", "task_1"));
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers()[header::RETRY_AFTER], "30");
        assert!(
            tasks.config.outage.is_down(),
            "the failure is part of the outage's story"
        );
        assert!(block_on(tasks.create("org_a", None)).is_err());
        let calls = broken.0.load(Ordering::SeqCst);
        assert_eq!(calls, 2);
        // Not an id (empty, too long, not visible ASCII): a 404 without a store call.
        let too_long = "t".repeat(MAX_TASK_ID_BYTES + 1);
        for id in ["", "task 1", "task_\u{7f}", "tâsk", too_long.as_str()] {
            assert_eq!(block_on(tasks.read("org_a", id)).unwrap(), None, "{id:?}");
        }
        assert_eq!(broken.0.load(Ordering::SeqCst), calls);
        // The longest id is looked up.
        let longest = "t".repeat(MAX_TASK_ID_BYTES);
        assert!(block_on(tasks.read("org_a", &longest)).is_err());
        assert_eq!(broken.0.load(Ordering::SeqCst), calls + 1);
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        // docs/gateway.md, Async tasks: a 30 s lease, kept 24 h, results up to 1 MiB.
        let tasks = Tasks::new(Arc::new(MemoryTaskStore::new()));
        assert_eq!(tasks.config.lease, Duration::from_secs(30));
        assert_eq!(tasks.config.retention, Duration::from_secs(24 * 60 * 60));
        assert_eq!(tasks.config.max_result_bytes, 1_048_576);
        assert_eq!(tasks.config.retry_after, Duration::from_secs(30));
        let shown = format!("{tasks:?}");
        assert!(
            shown.starts_with("Tasks {") && shown.contains("lease: 30s"),
            "{shown}"
        );
        let run = block_on(tasks.create("org_a", None)).unwrap();
        let shown = format!("{run:?}");
        assert!(
            shown.contains(run.id()) && shown.contains("Queued"),
            "{shown}"
        );
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn spawn_answers_202_and_records_what_the_work_ends_with() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let tasks = Tasks::new(Arc::new(MemoryTaskStore::new()));
            let id_of = |r: TaskResponse| async move {
                use http_body_util::BodyExt;
                assert_eq!(r.status(), StatusCode::ACCEPTED);
                let body = r.into_body().collect().await.unwrap().to_bytes();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(
                    (&v["success"], &v["status"]),
                    (&true.into(), &"queued".into())
                );
                v["task_id"].as_str().unwrap().to_owned()
            };
            let ok = id_of(
                tasks
                    .spawn("org_a", None, async {
                        Ok(Outcome::new(serde_json::json!({"file": "a"})).credits_used(2))
                    })
                    .await,
            )
            .await;
            let failed = id_of(
                tasks
                    .spawn("org_a", None, async {
                        Err::<Outcome<()>, _>(ApiError::new(ErrorCode::UpstreamError, "down"))
                    })
                    .await,
            )
            .await;
            // The work runs on the runtime: give it its turn.
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            let read = |id: String| {
                let tasks = tasks.clone();
                async move {
                    let body = tasks.read("org_a", &id).await.unwrap().unwrap();
                    serde_json::from_slice::<serde_json::Value>(&body).unwrap()
                }
            };
            let done = read(ok).await;
            assert_eq!(
                (
                    &done["status"],
                    &done["result"]["file"],
                    &done["credits_used"]
                ),
                (&"succeeded".into(), &"a".into(), &2.into())
            );
            let gone = read(failed).await;
            assert_eq!(
                (
                    &gone["status"],
                    &gone["error"]["code"],
                    &gone["error"]["message"]
                ),
                (&"failed".into(), &"upstream_error".into(), &"down".into())
            );
        });
    }

    /// A store whose `keep_task_renewed` hands out a renewal that says when it stops.
    struct Renewing(Arc<std::sync::atomic::AtomicBool>);

    impl TaskStore for Renewing {
        fn create_task<'a>(
            &'a self,
            _: &'a TaskKey,
            _: &'a TaskRecord,
            _: Duration,
        ) -> crate::BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(std::future::ready(Ok(())))
        }
        fn update_task<'a>(
            &'a self,
            _: &'a TaskKey,
            _: &'a TaskRecord,
            _: Duration,
        ) -> crate::BoxFuture<'a, Result<bool, StoreError>> {
            Box::pin(std::future::ready(Ok(true)))
        }
        fn renew_task<'a>(
            &'a self,
            _: &'a TaskKey,
            _: u64,
            _: Duration,
        ) -> crate::BoxFuture<'a, Result<bool, StoreError>> {
            Box::pin(std::future::ready(Ok(true)))
        }
        fn reap_task<'a>(
            &'a self,
            _: &'a TaskKey,
            _: &'a TaskRecord,
            _: u64,
            _: Duration,
        ) -> crate::BoxFuture<'a, Result<bool, StoreError>> {
            Box::pin(std::future::ready(Ok(false)))
        }
        fn read_task<'a>(
            &'a self,
            _: &'a TaskKey,
        ) -> crate::BoxFuture<'a, Result<Option<TaskRecord>, StoreError>> {
            Box::pin(std::future::ready(Ok(None)))
        }
        fn abandon_task(&self, _: &TaskKey, _: TaskRecord, _: Duration) {}
        fn leases(&self) -> bool {
            true
        }
        fn keep_task_renewed(
            &self,
            _: &TaskKey,
            _: Duration,
            _: Duration,
        ) -> Option<crate::Renewal> {
            let stopped = Arc::clone(&self.0);
            Some(crate::Renewal::new(move || {
                stopped.store(true, Ordering::SeqCst);
            }))
        }
    }

    #[test]
    fn a_run_renews_its_task_until_it_ends_through_any_arc() {
        fn through<S: TaskStore>(store: S) -> Tasks {
            Tasks::new(Arc::new(store))
        }
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The store behind one more `Arc` (its blanket impl forwards every method).
        let tasks = through(Arc::new(Renewing(Arc::clone(&stopped))));
        assert!(tasks.config.store.leases());
        let run = block_on(tasks.create("org_a", None)).unwrap();
        assert!(
            !stopped.load(Ordering::SeqCst),
            "renewed while the run lives"
        );
        assert!(block_on(run.succeed(&1, 0)).unwrap());
        assert!(
            stopped.load(Ordering::SeqCst),
            "and no longer once it ended"
        );
    }
}
