//! `server submit | status | export`: thin terminal clients of the REST API.
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Debug)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let res = req
            .send()
            .await
            .with_context(|| format!("cannot reach the coordinator at {}", self.base))?;
        if !res.status().is_success() {
            let status = res.status();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            bail!(
                "{status}: {}",
                body.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("(no message)")
            );
        }
        Ok(res)
    }

    pub async fn submit(&self, file: &Path) -> Result<Value> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let ctype = if file.extension().is_some_and(|e| e == "json") {
            "application/json"
        } else {
            "application/toml"
        };
        let req = self
            .http
            .post(format!("{}/api/sweeps", self.base))
            .header("content-type", ctype)
            .body(text);
        Ok(self.send(req).await?.json().await?)
    }

    pub async fn get_json(&self, path: &str) -> Result<Value> {
        Ok(self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?
            .json()
            .await?)
    }

    pub async fn get_text(&self, path: &str) -> Result<String> {
        Ok(self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?
            .text()
            .await?)
    }

    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        Ok(self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?
            .bytes()
            .await?
            .to_vec())
    }

    /// One line per sweep, or one line per job of a sweep.
    pub async fn status(&self, sweep: Option<i64>) -> Result<String> {
        let mut out = String::new();
        match sweep {
            None => {
                for s in self
                    .get_json("/api/sweeps")
                    .await?
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    out.push_str(&format!(
                        "{:>4}  {:<28} {:<10} {} jobs: {} pending, {} running, {} completed, {} diverged, {} failed, {} cancelled, {} pruned; {}/{} epochs\n",
                        s["id"].as_i64().unwrap_or(0), s["name"].as_str().unwrap_or(""), s["status"].as_str().unwrap_or(""), s["total"], s["pending"],
                        s["running"], s["completed"], s["diverged"], s["failed"], s["cancelled"], s["pruned"],
                        s["epochs_spent"], s["epochs_budget"]
                    ));
                }
            }
            Some(id) => {
                let s = self.get_json(&format!("/api/sweeps/{id}")).await?;
                out.push_str(&format!(
                    "sweep {id} {} ({})\n",
                    s["name"].as_str().unwrap_or(""),
                    s["status"].as_str().unwrap_or("")
                ));
                for j in s["jobs"].as_array().into_iter().flatten() {
                    let acc = j["latest"]["accuracy"]
                        .as_f64()
                        .map(|a| format!("{:.2}%", 100.0 * a))
                        .unwrap_or("-".into());
                    out.push_str(&format!(
                        "  job {:>5} {:<10} attempt {} epoch {}/{} acc {acc:>7}  {}\n",
                        j["id"],
                        j["status"].as_str().unwrap_or(""),
                        j["attempt"],
                        j["epoch"],
                        j["epochs"],
                        j["params"]
                    ));
                }
            }
        }
        Ok(out)
    }
}
