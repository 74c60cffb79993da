//! The workload: a static C binary (`tests/workload/workload.c`) compiled here and imported as a
//! one-file image, and labelled test containers running it, removed when a test ends.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, RemoveContainerOptions,
    StartContainerOptions,
};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::{TEST_LABEL, docker, unique};

static IMAGE: OnceCell<String> = OnceCell::const_new();

/// The workload image, built once per test binary: `tests/workload/workload.c` compiled with
/// `gcc -static` and imported as a one-file image.
pub async fn workload_image() -> String {
    IMAGE
        .get_or_init(|| async {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workload/workload.c");
            let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("workload"));
            std::fs::create_dir_all(&out_dir).unwrap();
            let bin = out_dir.join("workload");
            let status = Command::new("gcc")
                .args(["-static", "-O2", "-o"])
                .arg(&bin)
                .arg(&src)
                .status()
                .expect("gcc is needed to build the test workload (apt-get install gcc libc6-dev)");
            assert!(status.success(), "gcc -static failed on {}", src.display());
            let bytes = std::fs::read(&bin).unwrap();
            let tag = hex::encode(&Sha256::digest(&bytes)[..6]);
            let mut tar = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o755);
            header.set_cksum();
            tar.append_data(&mut header, "workload", bytes.as_slice())
                .unwrap();
            let archive = tar.into_inner().unwrap();
            let docker = docker().await;
            // Fully qualified, and the tag given inside `repo`: Podman's import keeps only that
            // form, and Docker takes it too.
            let image = format!("localhost/node-agent-test-workload:{tag}");
            // The tag is the binary's hash: an image with it already holds this very workload.
            if docker.inspect_image(&image).await.is_ok() {
                let _ = std::fs::remove_dir_all(&out_dir);
                return image;
            }
            let options = CreateImageOptions {
                from_src: Some("-".into()),
                repo: Some(image.clone()),
                ..Default::default()
            };
            let mut progress = docker.create_image(
                Some(options),
                Some(bollard::body_full(archive.into())),
                None,
            );
            while let Some(step) = progress.next().await {
                step.expect("docker import of the workload image failed");
            }
            let _ = std::fs::remove_dir_all(&out_dir);
            image
        })
        .await
        .clone()
}

/// A labelled test container running the workload; removed (force) when dropped.
#[derive(Debug)]
pub struct Workload {
    pub name: String,
}

impl Workload {
    /// Starts a container running `workload MODE [ALLOC_MB]`.
    pub async fn start(mode: &str) -> Workload {
        Self::start_with(mode, |_| {}).await
    }

    pub async fn start_with(mode: &str, tweak: impl FnOnce(&mut ContainerCreateBody)) -> Workload {
        let w = Self::create_with(mode, tweak).await;
        docker()
            .await
            .start_container(&w.name, None::<StartContainerOptions>)
            .await
            .expect("start test container");
        w.wait_ready().await;
        w
    }

    /// A test container made, not started.
    pub async fn create_with(mode: &str, tweak: impl FnOnce(&mut ContainerCreateBody)) -> Workload {
        let docker = docker().await;
        let name = unique("na-test");
        let mut body = ContainerCreateBody {
            image: Some(workload_image().await),
            cmd: Some(vec!["/workload".into(), mode.into(), "4".into()]),
            labels: Some([(TEST_LABEL.to_owned(), "1".to_owned())].into()),
            // Docker's own default, given explicitly: Podman records a container created through
            // its Docker API without one as `StopTimeout: 0`, and would kill it at once.
            stop_timeout: Some(10),
            host_config: Some(HostConfig {
                memory: Some(64 * 1024 * 1024),
                ..Default::default()
            }),
            ..Default::default()
        };
        tweak(&mut body);
        docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .expect("create test container");
        Workload { name }
    }

    /// Waits until the workload has installed its signal handlers (it prints "ready").
    async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.logs().await.contains("ready") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("workload {} never said ready", self.name);
    }

    /// Waits until the workload has logged `needle`, failing after `within`.
    pub async fn wait_logs(&self, needle: &str, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        while !self.logs().await.contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "workload {} did not log {needle:?} within {within:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn logs(&self) -> String {
        let docker = docker().await;
        let options = bollard::query_parameters::LogsOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let mut out = String::new();
        let mut stream = docker.logs(&self.name, Some(options));
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&chunk.to_string());
        }
        out
    }

    pub async fn inspect(&self) -> Option<bollard::models::ContainerInspectResponse> {
        docker()
            .await
            .inspect_container(&self.name, None::<InspectContainerOptions>)
            .await
            .ok()
    }

    pub async fn running(&self) -> bool {
        self.inspect()
            .await
            .and_then(|c| c.state)
            .and_then(|s| s.running)
            .unwrap_or(false)
    }

    pub async fn exit_code(&self) -> Option<i64> {
        self.inspect()
            .await
            .and_then(|c| c.state)
            .and_then(|s| s.exit_code)
    }

    /// `docker stop`, as a person would, behind the agent's back.
    pub async fn stop_by_hand(&self) {
        docker()
            .await
            .stop_container(
                &self.name,
                None::<bollard::query_parameters::StopContainerOptions>,
            )
            .await
            .expect("docker stop");
    }

    /// `docker start`, as a person would, behind the agent's back.
    pub async fn start_by_hand(&self) {
        docker()
            .await
            .start_container(&self.name, None::<StartContainerOptions>)
            .await
            .expect("docker start");
    }

    /// `docker kill --signal`, as a person would, behind the agent's back.
    pub async fn kill_by_hand(&self, signal: &str) {
        docker()
            .await
            .kill_container(
                &self.name,
                Some(bollard::query_parameters::KillContainerOptions {
                    signal: signal.to_owned(),
                }),
            )
            .await
            .expect("docker kill");
    }

    /// Removes the container now.
    pub async fn remove(&self) {
        let _ = docker()
            .await
            .remove_container(
                &self.name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // Drop cannot await: remove the container from a thread with a runtime of its own.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(d) = Docker::connect_with_local_defaults() {
                    let _ = d
                        .remove_container(
                            &name,
                            Some(RemoveContainerOptions {
                                force: true,
                                ..Default::default()
                            }),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}
