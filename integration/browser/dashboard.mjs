// Looks at the fleet dashboard the way a person does, in Debian's chromium
// (headless), and fails with a message naming what is wrong.
//
// Run by integration/tests/operator.rs with:
//   DASHBOARD_URL   https://127.0.0.1:PORT (the server's HTTP port, TLS)
//   DASHBOARD_TOKEN a dashboard token (cms-server dashboard-token)
//   CONVERGED_NODE  a node whose last run converged
//   FAILED_NODE     a node whose last run failed
//   ARTIFACTS       a folder for the screenshots
//   CHROMIUM        the browser [default: /usr/bin/chromium]
//
// The server's certificate is issued by the server's own CA, which this
// throwaway browser profile does not trust: the context ignores HTTPS
// errors rather than installing the CA into an NSS database.

import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const url = env('DASHBOARD_URL');
const token = env('DASHBOARD_TOKEN');
const convergedNode = env('CONVERGED_NODE');
const failedNode = env('FAILED_NODE');
const artifacts = env('ARTIFACTS');
mkdirSync(artifacts, { recursive: true });

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const profile = mkdtempSync(join(tmpdir(), 'cms-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  ignoreHTTPSErrors: true,
  viewport: { width: 1280, height: 900 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});

try {
  const page = browser.pages()[0] ?? (await browser.newPage());

  // Anonymous: refused, shown the login form, no fleet data.
  let response = await page.goto(`${url}/dashboard`);
  check(response.status() === 401, `anonymous /dashboard answered ${response.status()}, not 401`);
  check(await page.locator('input[name=token]').count() === 1, 'anonymous /dashboard does not show the login form');
  check(!(await page.content()).includes(failedNode), 'anonymous /dashboard shows a node');
  response = await page.goto(`${url}/dashboard/nodes/${convergedNode}`);
  check(response.status() === 401, `anonymous node page answered ${response.status()}, not 401`);

  // A wrong token is refused.
  await page.goto(`${url}/dashboard/login`);
  await page.fill('input[name=token]', 'cmsd_not-a-token');
  [response] = await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  check(response.status() === 401, `a wrong token answered ${response.status()}, not 401`);

  // Logging in leads to the fleet.
  await page.fill('input[name=token]', token);
  [response] = await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  check(response.status() === 200, `after login /dashboard answered ${response.status()}`);
  check(page.url().endsWith('/dashboard'), `login led to ${page.url()}`);
  const cookies = await browser.cookies();
  const session = cookies.find((c) => c.name === 'cms_session');
  check(session && session.httpOnly && session.secure && session.sameSite === 'Strict',
    `the session cookie is not Secure, HttpOnly and SameSite=Strict: ${JSON.stringify(session)}`);

  const rows = page.locator('table#nodes tbody tr');
  const count = await rows.count();
  check(count >= 2, `the node table has ${count} rows`);
  const first = await rows.nth(0).innerText();
  check(first.includes(failedNode) && first.includes('failed'),
    `the first node listed is not the failed one: ${first}`);
  const convergedRow = rows.filter({ hasText: convergedNode });
  check(await convergedRow.count() === 1, `${convergedNode} is not listed`);
  const convergedText = await convergedRow.innerText();
  check(convergedText.includes('unchanged') || convergedText.includes('changed'),
    `${convergedNode} does not show a converged run: ${convergedText}`);
  check(await page.locator('#no-triggers').isVisible(), 'the triggers section is missing');
  check((await page.locator('code.revision').count()) === 1, 'the roles revision is not shown');
  await page.screenshot({ path: join(artifacts, 'dashboard-fleet.png'), fullPage: true });

  // The converged node's page: tags, facts, its last run.
  [response] = await Promise.all([
    page.waitForNavigation(),
    convergedRow.locator('a').first().click(),
  ]);
  check(response.status() === 200, `the node page answered ${response.status()}`);
  const tags = await page.locator('table#tags').innerText();
  check(tags.includes('role') && tags.includes('app'), `the node's tags are missing: ${tags}`);
  check(await page.locator('pre#facts').count() === 1, 'the node has no facts shown');
  check(await page.locator('details.run').count() >= 2, 'the node page does not show both runs');
  // The file's content is markup on purpose: the diff shows it as text.
  const diff = page.locator('details.run.changed pre.diff').filter({ hasText: 'app.conf' });
  check(await diff.count() === 1, 'the changed run shows no diff of app.conf');
  check((await diff.innerText()).includes('+<b>served</b>'), `the diff does not show the new line as text: ${await diff.innerText()}`);
  check(await diff.locator('b').count() === 0, 'markup from a diff became an element');
  await page.screenshot({ path: join(artifacts, 'dashboard-node.png'), fullPage: true });

  // The failed node's page shows the failure and its error.
  response = await page.goto(`${url}/dashboard/nodes/${failedNode}`);
  check(response.status() === 200, `the failed node's page answered ${response.status()}`);
  check(await page.locator('details.run.failed pre.error').count() >= 1,
    'the failed run shows no error');

  // Logging out ends the session.
  await page.goto(`${url}/dashboard`);
  [response] = await Promise.all([page.waitForNavigation(), page.click('header button[type=submit]')]);
  response = await page.goto(`${url}/dashboard`);
  check(response.status() === 401, `after logout /dashboard answered ${response.status()}`);
  console.log('dashboard checks passed');
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
